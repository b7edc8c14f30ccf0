"""classify: the loop-safety predicate, one header set per row."""

from __future__ import annotations

import email
import email.policy
from email.message import Message

import pytest

from handlers.email.classify import Classification, can_reply, classify

PERSON = "From: Maria Lopez <maria@example.org>\nTo: bot@example.org\nSubject: Re: questionnaire\n"


def message(headers: str, body: str = "1. Maria\n", policy=email.policy.default) -> Message:
    raw = (headers.strip("\n") + "\n\n" + body).replace("\n", "\r\n").encode()
    return email.message_from_bytes(raw, policy=policy)


ROWS = [
    ("plain person", PERSON, "normal"),
    ("Auto-Submitted: no", PERSON + "Auto-Submitted: no", "normal"),
    ("Auto-Submitted: No (case)", PERSON + "Auto-Submitted: No", "normal"),
    ("auto-replied", PERSON + "Auto-Submitted: auto-replied", "auto_reply"),
    ("auto-generated", PERSON + "Auto-Submitted: auto-generated", "auto_reply"),
    ("auto-notified", PERSON + "Auto-Submitted: auto-notified; owner-email=x@y", "auto_reply"),
    ("X-Autoreply", PERSON + "X-Autoreply: yes", "auto_reply"),
    ("X-Autorespond", PERSON + "X-Autorespond: whatever", "auto_reply"),
    ("Precedence auto_reply", PERSON + "Precedence: auto_reply", "auto_reply"),
    ("Precedence bulk", PERSON + "Precedence: bulk", "list"),
    ("Precedence list", PERSON + "Precedence: list", "list"),
    ("Precedence junk", PERSON + "Precedence: JUNK", "list"),
    ("Precedence first-class", PERSON + "Precedence: first-class", "normal"),
    ("List-Id", PERSON + "List-Id: <news.example.org>", "list"),
    ("List-Unsubscribe", PERSON + "List-Unsubscribe: <mailto:leave@example.org>", "list"),
    ("empty Return-Path", "Return-Path: <>\n" + PERSON, "bounce"),
    ("Return-Path MAILER-DAEMON", "Return-Path: <MAILER-DAEMON>\n" + PERSON, "bounce"),
    ("mailer-daemon", "From: MAILER-DAEMON@mx.example.org\nSubject: failure", "bounce"),
    ("postmaster", "From: Postmaster <postmaster@example.org>\nSubject: x", "bounce"),
    ("noreply", "From: Alerts <noreply@example.org>\nSubject: x", "auto_reply"),
    ("no-reply", "From: no-reply@example.org\nSubject: x", "auto_reply"),
    ("do-not-reply", "From: do-not-reply@example.org\nSubject: x", "auto_reply"),
    ("no_reply+tag", "From: no_reply+news@example.org\nSubject: x", "auto_reply"),
    ("noreplyish person", "From: Noreen <noreen@example.org>\nSubject: x", "normal"),
    ("OOO en", "From: a@example.org\nSubject: Out of Office: questionnaire", "auto_reply"),
    ("OOO auto reply", "From: a@example.org\nSubject: Automatic reply: x", "auto_reply"),
    ("OOO fr", "From: a@example.org\nSubject: Réponse automatique : x", "auto_reply"),
    ("OOO es", "From: a@example.org\nSubject: Respuesta automática: x", "auto_reply"),
    ("OOO ru", "From: a@example.org\nSubject: Автоматический ответ: x", "auto_reply"),
    ("OOO zh", "From: a@example.org\nSubject: 自动回复: x", "auto_reply"),
    ("OOO ar", "From: a@example.org\nSubject: رد تلقائي: x", "auto_reply"),
    (
        "OOO encoded subject",
        "From: a@example.org\nSubject: =?utf-8?b?0JDQstGC0L7QvtGC0LLQtdGC?=: x",
        "auto_reply",
    ),
    ("person answering an OOO", "From: a@example.org\nSubject: Re: Automatic reply: x", "normal"),
    ("own marker", PERSON + "X-Capbot: 1", "own_mail"),
    (
        "own marker wins over everything",
        "Return-Path: <>\nFrom: bot@example.org\nX-Capbot: 1\nAuto-Submitted: auto-replied\n"
        "Content-Type: multipart/report; report-type=delivery-status; boundary=b",
        "own_mail",
    ),
    (
        "DSN",
        "From: x@example.org\nContent-Type: multipart/report; report-type=delivery-status; "
        "boundary=b",
        "bounce",
    ),
    (
        "MDN",
        "From: x@example.org\nContent-Type: multipart/report; "
        'report-type="disposition-notification"; boundary=b',
        "read_receipt",
    ),
    (
        "ARF feedback report",
        "From: x@example.org\nContent-Type: multipart/report; report-type=feedback-report; "
        "boundary=b",
        "bounce",
    ),
    (
        "bare MDN part",
        "From: x@example.org\nContent-Type: message/disposition-notification",
        "read_receipt",
    ),
    ("no From", "To: bot@example.org\nSubject: x", "malformed"),
    ("From without address", "From: Maria Lopez\nSubject: x", "malformed"),
    (
        "bounce without From is still a bounce",
        "Return-Path: <>\nSubject: Undelivered Mail",
        "bounce",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("headers", "kind"), [r[1:] for r in ROWS], ids=[r[0] for r in ROWS])
def test_classify(headers: str, kind: str) -> None:
    result = classify(message(headers))
    assert result.kind == kind, result
    if kind != "normal":
        assert result.reason  # every refusal says why


@pytest.mark.parametrize(("headers", "kind"), [r[1:] for r in ROWS], ids=[r[0] for r in ROWS])
def test_classify_compat32_message(headers: str, kind: str) -> None:
    assert classify(message(headers, policy=email.policy.compat32)).kind == kind


def test_truncated_multipart_is_malformed() -> None:
    msg = message(
        PERSON + 'Content-Type: multipart/mixed; boundary="b"',
        "--b\nContent-Type: text/plain\n\n1. Maria\n",
    )
    result = classify(msg)
    assert result.kind == "malformed"
    assert "truncated" in result.reason


def test_headerless_junk_is_malformed() -> None:
    msg = email.message_from_bytes(b"\x00\x01junk without headers", policy=email.policy.default)
    assert classify(msg) == Classification("malformed", "no header fields")


def test_classify_never_raises() -> None:
    class Exploding(Message):
        def raw_items(self):  # type: ignore[override]
            raise RuntimeError("boom")

        def get_content_type(self) -> str:
            raise RuntimeError("boom")

    assert classify(Exploding()).kind == "malformed"


@pytest.mark.parametrize(
    "kind", ["normal", "auto_reply", "bounce", "read_receipt", "list", "own_mail", "malformed"]
)
def test_can_reply_only_normal(kind: str) -> None:
    assert can_reply(Classification(kind, "")) is (kind == "normal")  # type: ignore[arg-type]
