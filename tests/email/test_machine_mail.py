"""Machine mail is never answered (issue 13, item 2): real DSNs of the common MTAs, feedback-loop
reports, list-manager errors and auto-replies (tests/fixtures/machine_mail, sources in its
SOURCES.md), classified by classify.py and, through Dovecot and the SMTP capture, kept with
their raw bytes and the reason, and answered by nothing."""

from __future__ import annotations

import email
import email.policy
from collections import Counter
from pathlib import Path

import pytest

from handlers.email.classify import can_reply, classify
from handlers.email.parsing import parse_message
from handlers.email.rawmail import decode_raw
from storage.models import inbound_messages, outbox
from tests.email.support import Env, Person

SAMPLES = sorted((Path(__file__).resolve().parents[1] / "fixtures" / "machine_mail").glob("*.eml"))
FAMILIES = ("postfix", "sendmail", "exim", "qmail", "exchange", "office365", "gmail", "yahoo",
            "arf", "rfc3834", "fml")


def test_the_samples_cover_every_common_mta_and_report() -> None:
    names = " ".join(p.name for p in SAMPLES)
    assert all(family in names for family in FAMILIES)
    assert len(SAMPLES) >= 100


@pytest.mark.parametrize("path", SAMPLES, ids=[p.stem for p in SAMPLES])
def test_each_sample_is_machine_mail(path: Path) -> None:
    msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    verdict = classify(msg)
    assert verdict.kind in ("bounce", "auto_reply", "list", "read_receipt"), verdict
    assert verdict.reason and not can_reply(verdict)


HEADERS = "To: bot@example.org\nSubject: Re: questionnaire\nMessage-ID: <x@example.net>\n"


@pytest.mark.parametrize(
    ("sender", "kind"),
    [
        ("post_master@example.org", "bounce"),
        ("Post.Master@example.org", "bounce"),
        ("post-master@example.org", "bounce"),
        ("Mailer_Daemon@example.org", "bounce"),
        ("Mail Delivery Subsystem <MAILER-DAEMON>", "bounce"),
        ("biosafety-request@lists.example.org", "list"),
        ("biosafety-admin@lists.example.org", "list"),
        ("biosafety-owner@lists.example.org", "list"),
        ("owner-biosafety@lists.example.org", "list"),
        ("biosafety-bounces+maria=example.org@lists.example.org", "list"),
        ("Maria Admin <maria.admin@example.org>", "normal"),  # a person named so
        ("requester@example.org", "normal"),
    ],
)
def test_postmaster_spellings_and_list_managers(sender: str, kind: str) -> None:
    raw = f"From: {sender}\n{HEADERS}\n1. Maria\n".replace("\n", "\r\n").encode()
    assert classify(email.message_from_bytes(raw, policy=email.policy.default)).kind == kind


async def test_through_the_channel_none_is_answered_and_each_is_kept(env: Env) -> None:
    for path in SAMPLES:
        # The envelope sender is a relay, so the Return-Path Dovecot adds proves nothing.
        await env.deliver(path.read_bytes(), mail_from="relay@example.net")
    await env.settle()
    person = Person(env, "someone@example.net", "Someone")
    await env.deliver(person.compose("Hello, I would like to answer the questionnaire, please."))
    await env.reply()
    await env.settle()
    assert [m.message["To"] for m in env.smtp.messages] == ["someone@example.net"]
    assert await env.rows(outbox, outbox.c.address != "someone@example.net") == []
    rows = await env.rows(inbound_messages)
    stored = [(r, decode_raw(r.payload).replace(b"\r\n", b"\n")) for r in rows]
    # Samples sharing a Message-ID are one message delivered twice: one row for the group.
    groups: dict[str, list[bytes]] = {}
    for path in SAMPLES:
        mail = parse_message(path.read_bytes())
        key = path.name if mail.message_id_synthesized else mail.message_id
        groups.setdefault(key, []).append(path.read_bytes().replace(b"\r\n", b"\n").strip())
    kinds: Counter[str] = Counter()
    for key, originals in groups.items():
        # Kept with its raw bytes (Dovecot adds Return-Path and Delivered-To above them).
        found = [r for r, raw in stored if any(o in raw for o in originals)]
        assert len(found) == 1, f"{key}: {len(found)} rows"
        assert found[0].status == "ignored", (key, found[0].status, found[0].reason)
        kinds[found[0].reason.split(":")[0]] += 1
    assert sum(kinds.values()) == len(groups) >= len(SAMPLES) - 10
    assert set(kinds) <= {"bounce", "auto_reply", "list", "read_receipt"}
    assert env.dovecot.list_uids(None) == []
