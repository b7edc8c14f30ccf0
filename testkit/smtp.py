"""SmtpCapture: an aiosmtpd server on loopback that keeps every message it receives."""

from __future__ import annotations

import asyncio
import email
import email.policy
import ssl
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any

from testkit.ports import LOOPBACK, free_port
from testkit.process import live_servers
from testkit.tls import shared_cert


@dataclass
class CapturedMessage:
    """One message received by SmtpCapture."""

    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    auth_login: str | None = None
    tls: bool = False

    @property
    def message(self) -> EmailMessage:
        """The message parsed with email.policy.default."""
        return email.message_from_bytes(self.data, policy=email.policy.default)  # type: ignore[return-value]


class _CaptureHandler:
    def __init__(self, owner: SmtpCapture) -> None:
        self.owner = owner

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        if address.lower() in self.owner.reject_recipients:
            return "550 5.1.1 No such user here"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.owner.accept_delay:  # a busy MTA: the message is stored just before "250"
            await asyncio.sleep(self.owner.accept_delay)
        auth = session.auth_data
        if isinstance(auth, bytes):
            auth = auth.decode("utf-8", "replace")
        msg = CapturedMessage(
            mail_from=envelope.mail_from,
            rcpt_tos=list(envelope.rcpt_tos),
            data=bytes(envelope.original_content),
            auth_login=auth if isinstance(auth, str) else None,
            tls=session.ssl is not None,
        )
        with self.owner._lock:
            self.owner.messages.append(msg)
        return "250 Message accepted for delivery"


class SmtpCapture:
    """An aiosmtpd server on loopback that keeps every message it receives.

    Async: ``cap = SmtpCapture(starttls=True); await cap.start(); ...; await cap.stop()``
    (or ``async with``), served on the running loop. Sync code: ``cap.start_threaded()`` /
    ``cap.stop_threaded()`` (or ``with``), served by aiosmtpd's Controller thread.
    With TLS (starttls/implicit_tls), give clients ``cap.cafile``. With ``auth={user: pw}``
    AUTH PLAIN/LOGIN is offered (and required unless ``auth_required=False``).
    """

    def __init__(
        self,
        *,
        host: str = LOOPBACK,
        port: int | None = None,
        starttls: bool = False,
        require_starttls: bool = False,
        implicit_tls: bool = False,
        auth: dict[str, str] | None = None,
        auth_required: bool = True,
        auth_require_tls: bool | None = None,
        reject_recipients: Iterable[str] = (),
        hostname: str = "smtp.test",
        accept_delay: float = 0.0,
    ) -> None:
        self.accept_delay = accept_delay
        self.host = host
        self.port = port or 0
        self.starttls = starttls or require_starttls
        self.require_starttls = require_starttls
        self.implicit_tls = implicit_tls
        self.auth = dict(auth) if auth else None
        self.auth_required = auth_required and bool(auth)
        # Default: AUTH needs TLS only when TLS is offered at all.
        self.auth_require_tls = auth_require_tls if auth_require_tls is not None else self.starttls
        self.reject_recipients = {r.lower() for r in reject_recipients}
        self.hostname = hostname
        self.messages: list[CapturedMessage] = []
        self.cafile: str | None = None
        self.keyfile: str | None = None
        self._lock = threading.Lock()
        self._handler = _CaptureHandler(self)
        self._server: asyncio.base_events.Server | None = None
        self._protocols: list[Any] = []
        self._controller: Any = None
        self._tls_context: ssl.SSLContext | None = None
        if self.starttls or self.implicit_tls:
            self.cafile, self.keyfile = shared_cert()
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(self.cafile, self.keyfile)
            self._tls_context = ctx

    # -- aiosmtpd plumbing -----------------------------------------------------------------

    def _authenticator(
        self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
    ) -> Any:
        from aiosmtpd.smtp import AuthResult, LoginPassword

        if not isinstance(auth_data, LoginPassword) or self.auth is None:
            return AuthResult(success=False, handled=False)
        login = auth_data.login.decode("utf-8", "replace")
        password = auth_data.password.decode("utf-8", "replace")
        ok = self.auth.get(login) == password
        return AuthResult(success=ok, handled=False, auth_data=login if ok else None)

    def _smtp_kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = {
            "hostname": self.hostname,
            "ident": "capbot test SMTP",
        }
        if self.starttls:
            kw["tls_context"] = self._tls_context
            kw["require_starttls"] = self.require_starttls
        if self.auth is not None:
            kw["authenticator"] = self._authenticator
            kw["auth_required"] = self.auth_required
            kw["auth_require_tls"] = self.auth_require_tls
        else:
            kw["auth_require_tls"] = False
        return kw

    def _factory(self) -> Any:
        from aiosmtpd.smtp import SMTP

        proto = SMTP(self._handler, **self._smtp_kwargs())
        self._protocols.append(proto)
        return proto

    # -- async life cycle ------------------------------------------------------------------

    async def start(self) -> SmtpCapture:
        """Serve on the running event loop."""
        loop = asyncio.get_running_loop()
        ssl_ctx = self._tls_context if self.implicit_tls else None
        self._server = await loop.create_server(
            self._factory, self.host, self.port, ssl=ssl_ctx, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        """Stop serving and drop open client connections."""
        if self._server is not None:
            self._server.close()
            for proto in self._protocols:
                transport = getattr(proto, "transport", None)
                if transport is not None:
                    transport.close()
            self._protocols.clear()
            await self._server.wait_closed()
            self._server = None
            await asyncio.sleep(0)  # let the session tasks see their cancellation

    async def __aenter__(self) -> SmtpCapture:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- threaded life cycle ---------------------------------------------------------------

    def start_threaded(self) -> SmtpCapture:
        """Serve from aiosmtpd's Controller thread (for synchronous code)."""
        from aiosmtpd.controller import Controller

        if self.port == 0:
            self.port = free_port(self.host)
        self._controller = Controller(
            self._handler,
            hostname=self.host,
            port=self.port,
            ssl_context=self._tls_context if self.implicit_tls else None,
            server_hostname=self.hostname,
            **{k: v for k, v in self._smtp_kwargs().items() if k != "hostname"},
        )
        self._controller.start()
        live_servers.add(self)
        return self

    def stop_threaded(self) -> None:
        """Stop the Controller thread."""
        if self._controller is not None:
            self._controller.stop()
            self._controller = None
        live_servers.discard(self)

    def stop_sync(self) -> None:
        """Alias of stop_threaded (used by the at-exit cleanup)."""
        self.stop_threaded()

    def __enter__(self) -> SmtpCapture:
        return self.start_threaded()

    def __exit__(self, *exc: object) -> None:
        self.stop_threaded()

    # -- inspection ------------------------------------------------------------------------

    def client_ssl_context(self) -> ssl.SSLContext:
        """A client SSLContext that trusts this server's certificate."""
        return ssl.create_default_context(cafile=self.cafile)

    def clear(self) -> None:
        """Forget the messages received so far."""
        with self._lock:
            self.messages.clear()

    async def wait_for(
        self,
        count: int = 1,
        timeout: float = 5.0,  # noqa: ASYNC109 (the documented API)
    ) -> list[CapturedMessage]:
        """Wait until at least `count` messages arrived; return them (TimeoutError if not)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while len(self.messages) < count:
            if asyncio.get_running_loop().time() >= deadline:
                raise TimeoutError(
                    f"SmtpCapture got {len(self.messages)} of {count} messages in {timeout}s"
                )
            await asyncio.sleep(0.01)
        return list(self.messages)

    def wait_for_sync(self, count: int = 1, timeout: float = 5.0) -> list[CapturedMessage]:
        """Blocking wait_for, for the threaded mode."""
        deadline = time.monotonic() + timeout
        while len(self.messages) < count:
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"SmtpCapture got {len(self.messages)} of {count} messages in {timeout}s"
                )
            time.sleep(0.01)
        return list(self.messages)
