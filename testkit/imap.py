"""IMAP helpers for the test Dovecot: its connection settings and the mailbox reads and
writes (imaplib, LMTP) it offers its tests."""

from __future__ import annotations

import contextlib
import email
import email.policy
import imaplib
import re
import smtplib
import ssl
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import TYPE_CHECKING

from handlers.email.imap import imap_utf7
from handlers.email.imap import mailbox_arg as imap_quote
from testkit.process import ServerError

# The mailbox-name codec is the bot's own (one copy), re-exported for the tests.
__all__ = ["ImapSettings", "MailboxClient", "imap_quote", "imap_utf7"]

if TYPE_CHECKING:
    from testkit.dovecot import Dovecot


_UID_RE = re.compile(rb"UID (\d+)")
_FLAGS_RE = re.compile(rb"FLAGS \(([^)]*)\)")


@dataclass(frozen=True)
class ImapSettings:
    """How to reach the test Dovecot as the bot user (what the `imap_server` fixture returns)."""

    host: str
    port: int
    ssl_port: int
    lmtp_port: int
    user: str
    password: str
    cafile: str
    domain: str
    address: str
    server: Dovecot = field(repr=False)

    def ssl_context(self) -> ssl.SSLContext:
        """A client SSLContext that trusts the server's self-signed certificate."""
        return ssl.create_default_context(cafile=self.cafile)


# --------------------------------------------------------------------------- Dovecot


class MailboxClient:
    """Reading and writing a Dovecot's mailboxes over IMAP (stdlib imaplib, synchronous) and
    delivering over LMTP; mixed into testkit.dovecot.Dovecot, which owns the ports and users."""

    host: str
    imap_port: int
    lmtp_port: int
    bot_user: str
    domain: str
    users: dict[str, str]

    def doveadm(self, *args: str, check: bool = True) -> str:
        raise NotImplementedError  # Dovecot runs the real doveadm

    @contextlib.contextmanager
    def imap(self, user: str | None = None) -> Iterator[imaplib.IMAP4]:
        """A logged-in stdlib imaplib connection (plain IMAP) as `user` (default bot)."""
        user = user or self.bot_user
        conn = imaplib.IMAP4(self.host, self.imap_port, timeout=30)
        try:
            conn.login(user, self.users[user])
            yield conn
        finally:
            with contextlib.suppress(Exception):
                conn.logout()

    def create_mailbox(self, user: str | None, name: str) -> None:
        """Create mailbox `name` (any Unicode name) for `user`."""
        with self.imap(user) as c:
            typ, data = c.create(imap_quote(name))
            if typ != "OK":
                raise ServerError(f"CREATE {name!r} failed: {data!r}")

    def list_mailboxes(self, user: str | None = None) -> list[str]:
        """Mailbox names of `user` (as doveadm prints them, i.e. decoded UTF-8)."""
        out = self.doveadm("mailbox", "list", "-u", user or self.bot_user)
        return [line for line in out.splitlines() if line]

    def append(
        self,
        user: str | None,
        raw: bytes,
        mailbox: str = "INBOX",
        flags: Iterable[str] = (),
    ) -> int:
        """APPEND one message; return its UID."""
        return self.append_many(user, [raw], mailbox, flags)[0]

    def append_many(
        self,
        user: str | None,
        messages: Iterable[bytes],
        mailbox: str = "INBOX",
        flags: Iterable[str] = (),
    ) -> list[int]:
        """APPEND many messages over one connection; return their UIDs."""
        flag_arg = "(" + " ".join(flags) + ")" if flags else None
        uids: list[int] = []
        with self.imap(user) as c:
            for raw in messages:
                typ, data = c.append(imap_quote(mailbox), flag_arg, None, raw)
                if typ != "OK":
                    raise ServerError(f"APPEND to {mailbox!r} failed: {data!r}")
                m = re.search(rb"APPENDUID \d+ (\d+)", data[0] or b"")
                uids.append(int(m.group(1)) if m else -1)
        return uids

    def _select(self, c: imaplib.IMAP4, mailbox: str) -> None:
        typ, data = c.select(imap_quote(mailbox), readonly=True)
        if typ != "OK":
            raise ServerError(f"SELECT {mailbox!r} failed: {data!r}")

    def list_uids(self, user: str | None = None, mailbox: str = "INBOX") -> list[int]:
        """UIDs of the messages in `mailbox`, ascending."""
        with self.imap(user) as c:
            self._select(c, mailbox)
            typ, data = c.uid("SEARCH", "ALL")
            if typ != "OK":
                raise ServerError(f"UID SEARCH failed: {data!r}")
            return sorted(int(x) for x in (data[0] or b"").split())

    def fetch_messages(self, user: str | None = None, mailbox: str = "INBOX") -> dict[int, bytes]:
        """{uid: raw bytes} of every message in `mailbox` (does not set \\Seen)."""
        result: dict[int, bytes] = {}
        with self.imap(user) as c:
            self._select(c, mailbox)
            typ, data = c.uid("FETCH", "1:*", "(UID BODY.PEEK[])")
            if typ != "OK":
                raise ServerError(f"UID FETCH failed: {data!r}")
            for item in data:
                if isinstance(item, tuple):
                    m = _UID_RE.search(item[0])
                    if m:
                        result[int(m.group(1))] = bytes(item[1])
        return dict(sorted(result.items()))

    def fetch_all(self, user: str | None = None, mailbox: str = "INBOX") -> list[bytes]:
        """Raw bytes of every message in `mailbox`, in UID order (does not set \\Seen)."""
        return list(self.fetch_messages(user, mailbox).values())

    def fetch_parsed(self, user: str | None = None, mailbox: str = "INBOX") -> list[EmailMessage]:
        """Every message in `mailbox` parsed with email.policy.default, in UID order."""
        return [
            email.message_from_bytes(raw, policy=email.policy.default)  # type: ignore[misc]
            for raw in self.fetch_all(user, mailbox)
        ]

    def flags(self, user: str | None = None, mailbox: str = "INBOX") -> dict[int, set[str]]:
        """{uid: set of flags} for every message in `mailbox`."""
        result: dict[int, set[str]] = {}
        with self.imap(user) as c:
            self._select(c, mailbox)
            typ, data = c.uid("FETCH", "1:*", "(UID FLAGS)")
            if typ != "OK":
                raise ServerError(f"UID FETCH failed: {data!r}")
            for item in data:
                line = item[0] if isinstance(item, tuple) else item
                if not isinstance(line, bytes):
                    continue
                u, f = _UID_RE.search(line), _FLAGS_RE.search(line)
                if u and f:
                    result[int(u.group(1))] = set(f.group(1).decode().split())
        return result

    # -- LMTP -----------------------------------------------------------------------------

    def deliver(
        self,
        recipients: str | Iterable[str],
        raw: bytes,
        mail_from: str = "sender@example.net",
    ) -> None:
        """Deliver `raw` through LMTP (adds Return-Path and Delivered-To), one
        transaction per recipient. A bare user name gets @domain appended."""
        if isinstance(recipients, str):
            recipients = [recipients]
        with smtplib.LMTP(self.host, self.lmtp_port, timeout=30) as lmtp:
            for rcpt in recipients:
                if "@" not in rcpt:
                    rcpt = f"{rcpt}@{self.domain}"
                refused = lmtp.sendmail(mail_from, [rcpt], raw)
                if refused:
                    raise ServerError(f"LMTP refused {refused!r}")


# --------------------------------------------------------------------------- PostgreSQL
