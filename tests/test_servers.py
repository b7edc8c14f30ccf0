"""The throwaway test servers (Dovecot, PostgreSQL, SMTP capture) really work."""

from __future__ import annotations

import asyncio
import email
import email.policy
import os
import smtplib
import ssl
from email.message import EmailMessage

import aioimaplib
import aiosmtplib
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from testkit.dovecot import Dovecot
from testkit.imap import ImapSettings, imap_utf7
from testkit.ports import free_port, free_ports
from testkit.postgres import Postgres
from testkit.process import in_ci, require_or_skip
from testkit.smtp import SmtpCapture

RAW = (
    b"From: Alice <alice@example.net>\r\n"
    b"To: bot@example.org\r\n"
    b"Subject: =?utf-8?b?0J/RgNC40LLQtdGC?=\r\n"
    b"Message-ID: <m1@example.net>\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"\r\n"
    b"Hello \xd0\xbc\xd0\xb8\xd1\x80\r\n"
)


def _literals(lines: list[object]) -> list[bytes]:
    """Message bodies in an aioimaplib response are bytearray; status lines are bytes."""
    return [bytes(x) for x in lines if isinstance(x, bytearray)]


# --------------------------------------------------------------------------- helpers


def test_free_ports_are_distinct_and_bindable() -> None:
    ports = free_ports(5)
    assert len(set(ports)) == 5
    assert 0 < free_port() < 65536


def test_imap_utf7_encoding() -> None:
    assert imap_utf7("INBOX") == "INBOX"
    assert imap_utf7("A&B") == "A&-B"
    assert imap_utf7("Входящие") == "&BBIERQQ+BDQETwRJBDgENQ-"


def test_require_or_skip_skips_locally_and_fails_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "false")
    assert not in_ci()
    with pytest.raises(pytest.skip.Exception):
        require_or_skip("no-such-program-capbot", "missing")
    require_or_skip("sh", "sh is always there")
    monkeypatch.setenv("CI", "true")
    assert in_ci()
    with pytest.raises(pytest.fail.Exception):
        require_or_skip(False, "missing")
    require_or_skip(True, "present")


# --------------------------------------------------------------------------- Dovecot


async def test_imap_plain_login_append_and_fetch(imap_server: ImapSettings) -> None:
    uid = imap_server.server.append(imap_server.user, RAW)
    assert imap_server.server.list_uids(imap_server.user) == [uid]

    client = aioimaplib.IMAP4(host=imap_server.host, port=imap_server.port, timeout=10)
    await client.wait_hello_from_server()
    response = await client.login(imap_server.user, imap_server.password)
    assert response.result == "OK", response
    assert (await client.select("INBOX")).result == "OK"
    await client.noop()  # see the notes: NOOP before UID SEARCH
    search = await client.uid_search("ALL")
    assert search.lines[0].split() == [str(uid).encode()]
    fetched = await client.uid("fetch", str(uid), "(BODY.PEEK[])")
    assert fetched.result == "OK"
    assert _literals(fetched.lines) == [RAW]
    await client.logout()
    # PEEK left the message unseen
    assert "\\Seen" not in imap_server.server.flags(imap_server.user)[uid]


async def test_imaps_login_with_self_signed_cert(imap_server: ImapSettings) -> None:
    client = aioimaplib.IMAP4_SSL(
        host=imap_server.host,
        port=imap_server.ssl_port,
        ssl_context=imap_server.ssl_context(),
        timeout=10,
    )
    await client.wait_hello_from_server()
    response = await client.login(imap_server.user, imap_server.password)
    assert response.result == "OK", response
    await client.logout()


async def test_imaps_rejects_untrusted_client_context(imap_server: ImapSettings) -> None:
    client = aioimaplib.IMAP4_SSL(
        host=imap_server.host,
        port=imap_server.ssl_port,
        ssl_context=ssl.create_default_context(),  # does not trust the test cert
        timeout=5,
    )
    with pytest.raises((ssl.SSLError, OSError, asyncio.TimeoutError)):
        await client.wait_hello_from_server()


async def test_wrong_password_is_refused(imap_server: ImapSettings) -> None:
    client = aioimaplib.IMAP4(host=imap_server.host, port=imap_server.port, timeout=10)
    await client.wait_hello_from_server()
    response = await client.login(imap_server.user, "wrong")
    assert response.result == "NO"
    await client.logout()


def test_lmtp_plus_address_lands_in_the_users_inbox(imap_server: ImapSettings) -> None:
    server = imap_server.server
    server.add_user("alice")
    server.deliver(["bot+tok-42@example.org"], RAW, mail_from="alice@example.net")
    [raw] = server.fetch_all("bot", "INBOX")
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert msg["Delivered-To"] == "bot+tok-42@example.org"
    assert msg["Return-Path"] == "<alice@example.net>"
    assert raw.endswith(RAW)
    assert server.list_uids("alice") == []

    server.deliver("alice", RAW, mail_from="")  # a bounce: Return-Path <>
    [bounce] = server.fetch_parsed("alice")
    assert bounce["Return-Path"] == "<>"
    with pytest.raises(smtplib.SMTPRecipientsRefused):
        server.deliver("nobody-here@example.org", RAW)


def test_mailboxes_and_reset(imap_server: ImapSettings) -> None:
    server = imap_server.server
    server.create_mailbox("bot", "Обработано & done")
    server.create_mailbox("bot", "Archive.2024")
    server.append("bot", RAW, mailbox="Обработано & done")
    server.append("bot", RAW)
    assert "Обработано & done" in server.list_mailboxes("bot")
    assert len(server.fetch_all("bot", "Обработано & done")) == 1
    server.reset()
    assert server.list_mailboxes("bot") == ["INBOX"]
    assert server.list_uids("bot") == []


def test_reset_between_tests_left_nothing(imap_server: ImapSettings) -> None:
    # Runs after the tests above in file order: the fixture emptied everything.
    assert imap_server.server.list_uids("bot") == []
    assert imap_server.server.list_mailboxes("bot") == ["INBOX"]


def test_standalone_dovecot_start_stop() -> None:
    reason = Dovecot.missing()
    require_or_skip(reason is None, reason or "")
    with Dovecot(bot_password="pw") as server:
        assert server.startup_seconds < 10
        assert server.append("bot", RAW) == 1
        directory = server.directory
    assert not os.path.exists(directory)


# --------------------------------------------------------------------------- PostgreSQL


async def test_postgres_select_1_through_sqlalchemy(postgres_url: str) -> None:
    assert postgres_url.startswith("postgresql+asyncpg://postgres@127.0.0.1:")
    engine = create_async_engine(postgres_url)
    try:
        async with engine.begin() as conn:
            assert (await conn.execute(text("SELECT 1"))).scalar_one() == 1
            await conn.execute(text("CREATE TABLE t (x text)"))
            await conn.execute(text("INSERT INTO t VALUES ('Привет')"))
            lowered = await conn.execute(text("SELECT lower(x) FROM t"))
            assert lowered.scalar_one() == "привет"
    finally:
        await engine.dispose()


async def test_each_test_gets_a_fresh_database(postgres_url: str, postgres: Postgres) -> None:
    engine = create_async_engine(postgres_url)
    try:
        async with engine.connect() as conn:
            tables = await conn.execute(
                text("SELECT count(*) FROM information_schema.tables WHERE table_name = 't'")
            )
            assert tables.scalar_one() == 0
    finally:
        await engine.dispose()
    assert postgres.url("x").endswith(f":{postgres.port}/x")


# --------------------------------------------------------------------------- SMTP


def _message() -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "bot@example.org"
    msg["To"] = "alice@example.net"
    msg["Subject"] = "Тест"
    msg.set_content("Bonjour à tous\n")
    return msg


async def test_smtp_plain_capture(smtp_server: SmtpCapture) -> None:
    await aiosmtplib.send(
        _message(), hostname=smtp_server.host, port=smtp_server.port, start_tls=False
    )
    [got] = await smtp_server.wait_for(1, timeout=5)
    assert got.mail_from == "bot@example.org"
    assert got.rcpt_tos == ["alice@example.net"]
    assert b"Subject: =?utf-8?" in got.data
    assert got.message.get_content().rstrip() == "Bonjour à tous"
    assert not got.tls
    smtp_server.clear()
    assert smtp_server.messages == []


async def test_smtp_starttls_and_auth(smtp_server_factory) -> None:
    capture = await smtp_server_factory(starttls=True, auth={"mailer": "s3cret"})
    await aiosmtplib.send(
        _message(),
        hostname="localhost",
        port=capture.port,
        cert_bundle=capture.cafile,
        username="mailer",
        password="s3cret",
    )
    [got] = await capture.wait_for(1)
    assert got.tls
    assert got.auth_login == "mailer"
    with pytest.raises(aiosmtplib.SMTPAuthenticationError):
        await aiosmtplib.send(
            _message(),
            hostname="localhost",
            port=capture.port,
            cert_bundle=capture.cafile,
            username="mailer",
            password="wrong",
        )


async def test_smtp_implicit_tls_and_rejected_recipient(smtp_server_factory) -> None:
    capture = await smtp_server_factory(implicit_tls=True, reject_recipients=["gone@example.net"])
    msg = _message()
    msg["Cc"] = "gone@example.net"
    errors, _ = await aiosmtplib.send(
        msg, hostname="127.0.0.1", port=capture.port, use_tls=True, cert_bundle=capture.cafile
    )
    assert "gone@example.net" in errors
    [got] = await capture.wait_for(1)
    assert got.rcpt_tos == ["alice@example.net"]


async def test_smtp_wait_for_times_out(smtp_server: SmtpCapture) -> None:
    with pytest.raises(TimeoutError):
        await smtp_server.wait_for(1, timeout=0.05)


def test_smtp_threaded_controller_for_sync_code() -> None:
    with SmtpCapture(starttls=True) as capture, smtplib.SMTP("127.0.0.1", capture.port) as s:
        s.starttls(context=capture.client_ssl_context())
        s.send_message(_message())
    [got] = capture.wait_for_sync(1)
    assert got.tls and got.rcpt_tos == ["alice@example.net"]
