"""Helpers for the email tests: the app with its channel on real servers, and a respondent
with a mail client (Dovecot in over LMTP, the bot's replies from the SMTP capture)."""

from __future__ import annotations

import asyncio
import email
import email.policy
import time
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path
from typing import Any

from sqlalchemy import select

from bot.app import App
from handlers.email.channel import EmailChannel
from testkit.dovecot import Dovecot
from testkit.imap import ImapSettings
from testkit.smtp import SmtpCapture

FIXTURES = Path(__file__).parent / "fixtures"
ROOT = Path(__file__).resolve().parents[2]
WAIT = 20.0  # seconds: an upper bound, not an expectation


def settings_for(imap: ImapSettings, smtp_port: int, **extra: Any) -> dict[str, Any]:
    base = {"imap_host": imap.host, "imap_port": imap.port, "imap_user": imap.user,
            "imap_password": imap.password, "imap_security": "plain",
            "smtp_host": "127.0.0.1", "smtp_port": smtp_port, "smtp_security": "plain",
            "email_from": imap.address, "secret_key": "test-secret", "imap_poll_seconds": 2.0}
    return {**base, **extra}


@dataclass
class Env:
    app: App
    channel: EmailChannel
    dovecot: Dovecot
    smtp: SmtpCapture
    bot: str  # the bot's address
    seen: int = 0  # captured messages already handed out

    async def deliver(self, raw: bytes, to: str | None = None, mail_from: str = "x@example.net"
                      ) -> None:
        await asyncio.to_thread(self.dovecot.deliver, [to or self.bot], raw, mail_from)

    async def replies(self, count: int = 1) -> list[EmailMessage]:
        """The next `count` messages the bot sends."""
        captured = await self.smtp.wait_for(self.seen + count, timeout=WAIT)
        new = captured[self.seen:self.seen + count]
        self.seen += count
        return [m.message for m in new]

    async def reply(self) -> EmailMessage:
        return (await self.replies(1))[0]

    async def settle(self) -> None:
        """Until the folder is empty and every outgoing mail is sent."""
        deadline = time.monotonic() + WAIT
        while self.dovecot.list_uids(None):
            assert time.monotonic() < deadline, "messages left in INBOX"
            await asyncio.sleep(0.05)
        await asyncio.wait_for(self.channel.dispatcher.wait_idle(), WAIT)

    async def rows(self, table, *where) -> list[Any]:
        async with self.app.db.connect() as conn:
            return list(await conn.execute(select(table).where(*where)))


def message_id(raw: bytes) -> str:
    return email.message_from_bytes(raw, policy=email.policy.default)["Message-ID"]


def body_of(msg: EmailMessage) -> str:
    return msg.get_body(("plain",)).get_content().replace("\r\n", "\n")


@dataclass
class Person:
    """A respondent with a mail client: writes, and replies (quoting) to the bot's last mail."""

    env: Env
    address: str
    name: str
    language: str | None = None
    last: EmailMessage | None = None
    sent: list[bytes] = field(default_factory=list)

    def compose(self, body: str, *, subject: str = "Questionnaire", to: str | None = None,
                headers: dict[str, str] | None = None) -> bytes:
        msg = EmailMessage()
        msg["From"] = f"{self.name} <{self.address}>"
        msg["To"] = to or self.env.bot
        msg["Subject"] = subject
        msg["Message-ID"] = make_msgid(domain=self.address.split("@")[1])
        if self.language:
            msg["Content-Language"] = self.language
        for name, value in (headers or {}).items():
            msg[name] = value
        msg.set_content(body)
        return bytes(msg)

    async def write(self, body: str, **kw: Any) -> EmailMessage:
        raw = self.compose(body, **kw)
        self.sent.append(raw)
        await self.env.deliver(raw, mail_from=self.address)
        self.last = await self.env.reply()
        assert self.last["To"] == self.address
        return self.last

    async def answer(self, body: str, *, quote: bool = True) -> EmailMessage:
        """Reply to the bot's last mail: its Reply-To, "Re:" subject, threading, quoted text."""
        last = self.last
        assert last is not None
        quoted = "\n".join("> " + line for line in body_of(last).splitlines())
        text = f"{body}\n\nOn Mon, 3 Mar 2025 at 10:00, Capacity Bot <{self.env.bot}> wrote:\n" \
            f"{quoted}" if quote else body
        raw = self.compose(text, subject="Re: " + last["Subject"], to=last["Reply-To"],
                           headers={"In-Reply-To": last["Message-ID"],
                                    "References": last["Message-ID"]})
        self.sent.append(raw)
        await self.env.deliver(raw, to=last["Reply-To"], mail_from=self.address)
        self.last = await self.env.reply()
        return self.last
