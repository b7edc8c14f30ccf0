"""Sending mail with aiosmtplib: a small pool of reused connections, TLS as configured.

A new STARTTLS connection per message costs ~40 ms here, a reused one ~3 ms, so connections
are kept open and reused; a connection the server dropped is reopened once, transparently.
Errors are sorted for the outbox: 5xx for a recipient is permanent, everything else
(4xx, network, timeouts) is transient and retried with backoff by the dispatcher.

An outage (cannot connect, dropped connection, timeout, 421) is logged once at WARNING
when it begins, and again at WARNING when a message goes through after it; the retries in
between are for the dispatcher's INFO lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass

import aiosmtplib

from bot.outbox import PermanentSendError, TransientSendError

logger = logging.getLogger(__name__)

DEFAULT_PORTS = {"ssl": 465, "starttls": 587, "plain": 25}


@dataclass(frozen=True)
class SmtpConfig:
    host: str
    port: int | None = None
    security: str = "starttls"  # ssl | starttls | plain
    user: str | None = None
    password: str | None = None
    cafile: str | None = None  # CA bundle to trust (a self-signed server); system CAs if None
    timeout: float = 30.0
    connections: int = 4
    idle_seconds: float = 120.0  # close a connection unused for this long before reusing it

    @property
    def effective_port(self) -> int:
        return self.port or DEFAULT_PORTS[self.security]


class SmtpSender:
    """`await sender.send(mail_from, [rcpt], data)`; safe to call from many tasks at once."""

    def __init__(self, config: SmtpConfig) -> None:
        self.config = config
        self._idle: asyncio.LifoQueue[tuple[aiosmtplib.SMTP, float]] = asyncio.LifoQueue()
        self._slots = asyncio.Semaphore(max(1, config.connections))
        self._open: set[aiosmtplib.SMTP] = set()
        self._closed = False
        self.connects = 0  # connections opened (tests check that they are reused)
        self.down_since: float | None = None  # monotonic time of the outage's first failure
        self._failed_while_down = 0

    def _down(self, why: str) -> None:
        if self.down_since is None:
            self.down_since, self._failed_while_down = time.monotonic(), 1
            logger.warning("SMTP server %s:%d is not taking mail (%s): it waits in the "
                           "outbox and is retried", self.config.host, self.config.effective_port,
                           why)
        else:
            self._failed_while_down += 1
            logger.debug("SMTP server still unreachable: %s", why)

    def _up(self) -> None:
        if self.down_since is not None:
            logger.warning("SMTP server %s:%d takes mail again: flowing after %.0f s "
                           "(%d attempts failed meanwhile)", self.config.host,
                           self.config.effective_port, time.monotonic() - self.down_since,
                           self._failed_while_down)
            self.down_since = None

    def _tls_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.config.cafile)

    async def _connect(self) -> aiosmtplib.SMTP:
        cfg = self.config
        client = aiosmtplib.SMTP(
            hostname=cfg.host, port=cfg.effective_port, timeout=cfg.timeout,
            use_tls=cfg.security == "ssl",
            start_tls=cfg.security == "starttls",  # False: never upgrade by surprise
            tls_context=self._tls_context() if cfg.security != "plain" else None)
        try:
            await client.connect()
            if cfg.user:
                await client.login(cfg.user, cfg.password or "")
        except aiosmtplib.SMTPAuthenticationError as exc:
            client.close()
            logger.error("SMTP login as %s refused: %s", cfg.user, exc)
            raise TransientSendError(f"SMTP login refused: {exc}") from exc
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            client.close()
            raise TransientSendError(f"cannot connect to {cfg.host}:{cfg.effective_port}: "
                                     f"{exc}") from exc
        self.connects += 1
        self._open.add(client)
        return client

    async def _checkout(self) -> aiosmtplib.SMTP:
        while not self._idle.empty():
            client, since = self._idle.get_nowait()
            if client.is_connected and time.monotonic() - since < self.config.idle_seconds:
                return client
            await self._discard(client)
        return await self._connect()

    async def _discard(self, client: aiosmtplib.SMTP) -> None:
        self._open.discard(client)
        with contextlib.suppress(Exception):
            if client.is_connected:
                await asyncio.wait_for(client.quit(), 2)
        with contextlib.suppress(Exception):
            client.close()

    async def send(self, mail_from: str, recipients: Sequence[str], data: bytes) -> None:
        if self._closed:
            raise TransientSendError("sender is closed")
        async with self._slots:
            try:
                client = await self._checkout()
            except TransientSendError as exc:
                self._down(str(exc))
                raise
            try:
                # A pooled connection may have been dropped by the server: retry once on a
                # fresh one before calling it a failure.
                for attempt in (1, 2):
                    try:
                        await self._transaction(client, mail_from, recipients, data)
                        break
                    except aiosmtplib.SMTPServerDisconnected:
                        await self._discard(client)
                        if attempt == 2:
                            raise
                        client = await self._connect()
            except aiosmtplib.SMTPResponseException as exc:  # refused sender/recipient/data
                if exc.code == 421:  # "service not available, closing channel"
                    self._down(f"{exc.code} {exc.message}")
                await self._reset_or_discard(client)
                if 500 <= exc.code < 600 and exc.code not in (500, 502, 503, 504, 530):
                    raise PermanentSendError(f"{exc.code} {exc.message}") from exc
                raise TransientSendError(f"{exc.code} {exc.message}") from exc
            except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
                await self._discard(client)
                self._down(f"{type(exc).__name__}: {exc}")
                raise TransientSendError(f"{type(exc).__name__}: {exc}") from exc
            except TransientSendError as exc:  # the reconnection after a drop failed
                self._down(str(exc))
                raise
            except BaseException:
                await self._discard(client)
                raise
            else:
                self._idle.put_nowait((client, time.monotonic()))
                self._up()

    @staticmethod
    async def _transaction(client: aiosmtplib.SMTP, mail_from: str, recipients: Sequence[str],
                           data: bytes) -> None:
        """MAIL, RCPT, DATA through aiosmtplib's public commands: sendmail() would also
        compute the optional SIZE, i.e. normalize the whole message once more (~0.2 ms)."""
        await client.mail(mail_from)
        for recipient in recipients:
            await client.rcpt(recipient)
        await client.data(data)

    async def _reset_or_discard(self, client: aiosmtplib.SMTP) -> None:
        try:
            await client.rset()
        except Exception:
            await self._discard(client)
        else:
            self._idle.put_nowait((client, time.monotonic()))

    async def close(self) -> None:
        self._closed = True
        for client in list(self._open):
            await self._discard(client)
        while not self._idle.empty():
            self._idle.get_nowait()
