"""Malformed MIME and unlabelled 8-bit mail (issue 13, item 2).

Broken boundaries, unknown and lying charsets, 8-bit headers, nested message/rfc822, huge
headers, a missing From, a zip bomb attached, HTML-only mail with scripts: never a crash; each
message is processed (answered) or kept aside with its raw bytes and the reason, through
Dovecot and the SMTP capture. Cyrillic (cp1251, koi8-r) and Chinese (gb18030) bodies with no
charset label are decoded by charset-normalizer.
"""

from __future__ import annotations

import functools
import io
import zipfile

import pytest

from handlers.email.classify import guess_charset
from handlers.email.parsing import parse_message
from handlers.email.rawmail import decode_raw
from storage.models import inbound_messages
from tests.email.support import Env

RU = "Здравствуйте!\n\n1. Иван Петров\n3. Министерство природных ресурсов и экологии"
ZH = "您好：\n\n1、王芳\n3、生态环境部\n4、2"
UNLABELLED = [("ru", RU, "cp1251"), ("ru", RU, "koi8-r"), ("zh", ZH, "gb18030"),
              ("ru_short", "1. Иван Петров", "koi8-r"),
              ("fr", "1. Amélie Lefèvre\n3. Ministère de l'Écologie", "cp1252")]


def message(n: int, headers: str, body: bytes, sender: str = "Sender <s{n}@example.net>") -> bytes:
    head = (f"From: {sender.format(n=n)}\nTo: bot@example.org\nSubject: Questionnaire {n}\n"
            f"Message-ID: <mime-{n}@example.net>\n{headers}").strip("\n")
    return head.replace("\n", "\r\n").encode("utf-8") + b"\r\n\r\n" + body


@pytest.mark.parametrize(("lang", "text", "charset"), UNLABELLED,
                         ids=[f"{lang}-{cs}" for lang, _, cs in UNLABELLED])
def test_unlabelled_8bit_bodies_are_decoded(lang: str, text: str, charset: str) -> None:
    body = text.replace("\n", "\r\n").encode(charset)
    for label in ("", "; charset=us-ascii", "; charset=x-unknown"):  # none, lying, unknown
        raw = message(1, f"MIME-Version: 1.0\nContent-Type: text/plain{label}\n"
                         "Content-Transfer-Encoding: 8bit", body)
        assert parse_message(raw).reply_text == text, (charset, label)


def test_guess_charset_prefers_the_common_charsets() -> None:
    assert guess_charset(RU.encode("cp1251")) == "cp1251"  # not mac_cyrillic
    assert guess_charset("Ministère de l'Écologie".encode("cp1252")) == "cp1252"  # not cp1250
    assert guess_charset(b"\xff\xfe\x00") in ("cp1252", "cp1251", "koi8_r", "cp1256",
                                              "gb18030", "big5hkscs")


def _zip_bomb() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("report.txt", b"\0" * 50_000_000)  # 50 MB of zeros, ~50 kB zipped
    return buf.getvalue()


def _b64(data: bytes) -> bytes:
    import base64

    return base64.encodebytes(data)


@functools.cache
def malformed() -> dict[str, bytes]:
    zipped = _b64(_zip_bomb())
    inner = message(99, "Content-Type: text/plain; charset=utf-8", b"1. Nested")
    return {
        "broken boundary": message(1, 'MIME-Version: 1.0\nContent-Type: multipart/mixed; '
                                   'boundary="AAA"', b"--BBB\r\nContent-Type: text/plain\r\n\r\n"
                                   b"1. Maria\r\n--BBB--\r\n"),
        "truncated multipart": message(2, 'Content-Type: multipart/alternative; boundary="b"',
                                       b"--b\r\nContent-Type: text/plain\r\n\r\n1. Maria\r\n"),
        "unknown charset": message(3, "Content-Type: text/plain; charset=x-klingon",
                                   "1. María López".encode("cp1252")),
        "lying charset": message(4, "Content-Type: text/plain; charset=utf-8",
                                 "1. María López".encode("cp1252")),
        "8-bit headers": message(5, "Content-Type: text/plain; charset=koi8-r",
                                 "1. Иван".encode("koi8-r"),
                                 sender="Иван Петров <s{n}@example.net>").replace(
            "Иван Петров".encode(), "Иван Петров".encode("koi8-r")),
        "nested message/rfc822": message(6, 'Content-Type: multipart/mixed; boundary="m"',
                                         b"--m\r\nContent-Type: text/plain\r\n\r\nSee below.\r\n"
                                         b"--m\r\nContent-Type: message/rfc822\r\n\r\n" + inner
                                         + b"\r\n--m--\r\n"),
        "huge headers": message(7, "".join(f"X-Trace-{i}: {'x' * 900}\n" for i in range(300)),
                                b"1. Maria\r\n"),
        "missing From": message(8, "Content-Type: text/plain", b"1. Maria\r\n",
                                sender="").replace(b"From: \r\n", b""),
        "zip bomb attached": message(9, 'MIME-Version: 1.0\nContent-Type: multipart/mixed; '
                                     'boundary="z"', b"--z\r\nContent-Type: text/plain\r\n\r\n"
                                     b"Hello, my report is attached.\r\n--z\r\nContent-Type: "
                                     b"application/zip; name=r.zip\r\nContent-Transfer-Encoding: "
                                     b"base64\r\n\r\n" + zipped + b"--z--\r\n"),
        "HTML only with scripts": message(10, "Content-Type: text/html; charset=utf-8",
                                          b"<html><head><script>while(1){}</script></head><body>"
                                          b"<script>document.write('x')</script><p>Hello, I "
                                          b"would like to answer the questionnaire.</p>"
                                          b"<img src=x onerror=alert(1)></body></html>"),
        "unlabelled cp1251": message(11, "Content-Type: text/plain", RU.encode("cp1251")),
        "unlabelled koi8-r": message(12, "Content-Type: text/plain", RU.encode("koi8-r")),
        "unlabelled gb18030": message(13, "Content-Type: text/plain", ZH.encode("gb18030")),
        "not mail at all": b"\x00\x01\x02 PNG \xff\xfe garbage without headers\r\n",
    }


@pytest.mark.parametrize("name", list(malformed()))
def test_parse_never_raises(name: str) -> None:
    mail = parse_message(malformed()[name])
    assert mail.classification.kind in ("normal", "malformed")
    assert "<script" not in mail.body_text and "document.write" not in mail.body_text


async def test_through_the_channel_each_is_processed_or_kept_with_the_reason(env: Env) -> None:
    samples = malformed()
    for raw in samples.values():
        await env.deliver(raw)
    await env.settle()
    rows = await env.rows(inbound_messages)
    stored = [(r, decode_raw(r.payload).replace(b"\r\n", b"\n")) for r in rows]
    answered = {m.message["To"] for m in env.smtp.messages}
    outcome = {}
    for name, raw in samples.items():
        # As IMAP serves it: Dovecot turns NUL into 0x80 and prepends its trace headers.
        body = raw.replace(b"\r\n", b"\n").replace(b"\x00", b"\x80").strip()
        found = [r for r, data in stored if body in data]
        assert len(found) == 1, (name, len(found))  # kept with its raw bytes, once
        row = found[0]
        assert row.status in ("processed", "ignored", "rejected"), (name, row.status, row.reason)
        if row.status != "processed":
            assert row.reason, name
        outcome[name] = row.status
    # Readable mail from a person is answered; the rest kept aside, never answered.
    assert outcome["HTML only with scripts"] == "processed"
    assert outcome["unlabelled koi8-r"] == outcome["unlabelled gb18030"] == "processed"
    assert outcome["missing From"] != "processed" and outcome["not mail at all"] != "processed"
    assert {f"s{n}@example.net" for n in (10, 11, 12, 13)} <= answered
    assert env.dovecot.list_uids(None) == []
