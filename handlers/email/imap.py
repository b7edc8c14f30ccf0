"""The IMAP side: watch a folder (IDLE, or polling without it), fetch, hand over, then move.

One task owns one aioimaplib connection. For each round: NOOP (Dovecot's EXISTS for mail
delivered on another connection may otherwise be missing from the search), UID SEARCH,
UID FETCH in chunks with BODY.PEEK[] (never sets \\Seen), hand the messages to the handler,
and only for the UIDs the handler says are safely recorded: STORE \\Seen, then MOVE to the
processed folder (COPY + \\Deleted + UID EXPUNGE when the server lacks MOVE). A message the
handler could not record stays in the folder and is tried again later.

aioimaplib traps handled here: a dropped connection wakes nothing (conn_lost_cb sets an
event that every wait races against); mailbox names are sent raw (we quote and encode them
in modified UTF-7); MOVE is only advertised after login (CAPABILITY is asked again); the
IMAP4_SSL class drops conn_lost_cb (IMAP4 with an ssl_context is used instead).
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import logging
import random
import re
import ssl
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import aioimaplib

logger = logging.getLogger(__name__)
T = TypeVar("T")

_UID = re.compile(rb"\bUID (\d+)")
_SIZE = re.compile(rb"\bRFC822\.SIZE (\d+)")
_PUSH_NEW = re.compile(rb"^\d+ (?:EXISTS|RECENT)\b")


@dataclass(frozen=True)
class ImapConfig:
    host: str
    port: int | None = None
    user: str = ""
    password: str = ""
    security: str = "ssl"  # ssl | plain
    folder: str = "INBOX"
    processed_folder: str = "Processed"  # required: processed mail is moved there
    cafile: str | None = None  # CA bundle to trust (a self-signed server); system CAs if None
    timeout: float = 30.0  # per command
    # Restart IDLE this often: before the server's 30-minute autologout, and soon enough to
    # notice a connection a NAT dropped without a word (no FIN: conn_lost_cb never fires).
    idle_seconds: float = 10 * 60
    poll_seconds: float = 60.0  # without IDLE: how often to look; also the retry delay
    use_idle: bool | None = None  # None: when the server offers it
    batch_size: int = 50  # messages per UID FETCH
    max_bytes: int = 2_000_000  # bodies are fetched up to this size (+1 byte to tell)
    backoff_max: float = 60.0

    @property
    def effective_port(self) -> int:
        return self.port or (993 if self.security == "ssl" else 143)


@dataclass(frozen=True, slots=True)
class Fetched:
    uid: int
    raw: bytes  # the message, or its first max_bytes + 1 bytes when it is larger
    size: int  # RFC822.SIZE reported by the server


Handler = Callable[[list[Fetched]], Awaitable[Sequence[int]]]


class ConnectionLost(Exception):
    """The IMAP connection dropped (or the server said BYE)."""


def imap_utf7(name: str) -> str:
    """Modified UTF-7 of RFC 3501 for mailbox names ("Traités" -> "Trait&AOk-s")."""
    out: list[str] = []
    pending: list[str] = []

    def flush() -> None:
        if pending:
            data = "".join(pending).encode("utf-16-be")
            out.append("&" + base64.b64encode(data).decode().rstrip("=").replace("/", ",")
                       + "-")
            pending.clear()

    for ch in name:
        if 0x20 <= ord(ch) <= 0x7E:
            flush()
            out.append("&-" if ch == "&" else ch)
        else:
            pending.append(ch)
    flush()
    return "".join(out)


def mailbox_arg(name: str) -> str:
    """A mailbox name as an IMAP quoted string (aioimaplib sends arguments verbatim)."""
    encoded = imap_utf7(name)
    return '"' + encoded.replace("\\", "\\\\").replace('"', '\\"') + '"'


def uid_set(uids: Sequence[int]) -> str:
    """"3:5,9" for [3, 4, 5, 9]: short commands for long runs of UIDs."""
    ordered = sorted(set(uids))
    parts: list[str] = []
    start = prev = ordered[0]
    for uid in ordered[1:]:
        if uid == prev + 1:
            prev = uid
            continue
        parts.append(f"{start}:{prev}" if prev > start else str(start))
        start = prev = uid
    parts.append(f"{start}:{prev}" if prev > start else str(start))
    return ",".join(parts)


class ImapWatcher:
    """Runs until stop(): connect, drain the folder, wait for mail, reconnect with backoff."""

    def __init__(self, config: ImapConfig, handler: Handler) -> None:
        self.config = config
        self.handler = handler
        self._client: aioimaplib.IMAP4 | None = None
        self._lost = asyncio.Event()
        self._stop = asyncio.Event()
        self._task: asyncio.Task | None = None
        self.connected = asyncio.Event()  # set while a session is up (tests, health)
        self.sessions = 0  # successful logins so far (tests check reconnection)
        self.idle_supported = False

    # -- life cycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Start watching (again, after a stop: a replica leading ingest once more)."""
        if self._task is not None and not self._task.done():
            return
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name="imap-watcher")

    @property
    def job_name(self) -> str:
        """The leader job reading this mailbox (bot/leaders.py): one per user, server, folder."""
        c = self.config
        return f"imap:{c.user}@{c.host}:{c.effective_port}/{c.folder}"

    def as_job(self) -> WatcherJob:
        return WatcherJob(self)

    async def stop(self, grace: float = 10.0) -> None:
        """Let the current batch finish (commit and move), then log out."""
        self._stop.set()
        if self._task is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(self._task), grace)
        except TimeoutError:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._task = None

    async def _run(self) -> None:
        delay = 1.0
        while not self._stop.is_set():
            try:
                await self._connect()
                delay = 1.0
                await self._session()
            except asyncio.CancelledError:
                raise
            except (ConnectionLost, aioimaplib.Abort, aioimaplib.CommandTimeout, OSError,
                    TimeoutError, ssl.SSLError) as exc:
                if not self._stop.is_set():
                    logger.warning("IMAP %s:%s: %s; reconnecting in %.0fs", self.config.host,
                                   self.config.effective_port, exc or type(exc).__name__, delay)
            except Exception:
                logger.exception("IMAP session failed; reconnecting in %.0fs", delay)
            finally:
                self.connected.clear()
                await self._disconnect()
            if self._stop.is_set():
                break
            await self._sleep(delay * random.uniform(0.8, 1.2))
            delay = min(self.config.backoff_max, delay * 2)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)

    # -- connection ----------------------------------------------------------------------------

    async def _connect(self) -> None:
        cfg = self.config
        self._lost = asyncio.Event()
        lost = self._lost
        context = ssl.create_default_context(cafile=cfg.cafile) if cfg.security == "ssl" \
            else None
        client = aioimaplib.IMAP4(host=cfg.host, port=cfg.effective_port, timeout=cfg.timeout,
                                  conn_lost_cb=lambda exc: lost.set(), ssl_context=context)
        self._client = client
        await self._guard(client.wait_hello_from_server())
        response = await self._guard(client.login(cfg.user, cfg.password))
        if response.result != "OK":
            raise ConnectionLost(f"login refused for {cfg.user}: {_text(response)}")
        await self._guard(client.protocol.capability())  # MOVE, UIDPLUS appear after login
        response = await self._guard(client.select(mailbox_arg(cfg.folder)))
        if response.result != "OK":
            raise ConnectionLost(f"cannot select {cfg.folder}: {_text(response)}")
        response = await self._guard(client.create(mailbox_arg(cfg.processed_folder)))
        if response.result != "OK" and b"ALREADYEXISTS" not in b" ".join(
                line for line in response.lines if isinstance(line, bytes)):
            logger.warning("cannot create the processed folder %r: %s", cfg.processed_folder,
                           _text(response))
        self.idle_supported = client.has_capability("IDLE") and cfg.use_idle is not False
        self.sessions += 1
        self.connected.set()
        logger.info("IMAP connected to %s:%s as %s (%s)", cfg.host, cfg.effective_port,
                    cfg.user, "IDLE" if self.idle_supported else "polling")

    async def _disconnect(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        if not self._lost.is_set():
            with contextlib.suppress(Exception):
                if client.has_pending_idle():
                    client.idle_done()
                await asyncio.wait_for(client.logout(), 2)
        with contextlib.suppress(Exception):
            if client.protocol.transport is not None:
                client.protocol.transport.close()

    async def _guard(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run one command, but give up at once when the connection drops."""
        task = asyncio.ensure_future(coro)
        lost = asyncio.ensure_future(self._lost.wait())
        try:
            await asyncio.wait({task, lost}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            lost.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            raise ConnectionLost("connection lost")
        return task.result()

    # -- one session ---------------------------------------------------------------------------

    async def _session(self) -> None:
        while not self._stop.is_set():
            retry_soon = await self._drain()
            if self._stop.is_set():
                return
            wait = self.config.poll_seconds if retry_soon or not self.idle_supported \
                else self.config.idle_seconds
            if self.idle_supported:
                await self._idle(wait)
            else:
                await self._poll_wait(wait)

    async def _drain(self) -> bool:
        """Process everything in the folder; True when some messages must be retried later."""
        client = self._client
        assert client is not None
        failed: set[int] = set()
        while not self._stop.is_set():
            await self._guard(client.noop())
            response = await self._guard(client.uid_search("UNDELETED", charset=None))
            if response.result != "OK":
                raise ConnectionLost(f"UID SEARCH failed: {_text(response)}")
            uids = [int(u) for u in response.lines[0].split()] if response.lines else []
            todo = [u for u in uids if u not in failed]
            if not todo:
                return bool(failed)
            # Pipelined: up to two chunks are being processed while the next one is fetched;
            # a chunk is moved only once its handler has returned (its messages committed).
            inflight: collections.deque[tuple[asyncio.Task, list[Fetched]]] = \
                collections.deque()
            try:
                for start in range(0, len(todo), self.config.batch_size):
                    if self._stop.is_set():
                        break
                    messages = await self._fetch(todo[start:start + self.config.batch_size])
                    if messages:
                        inflight.append((asyncio.ensure_future(self.handler(messages)),
                                         messages))
                    while len(inflight) > 1:
                        await self._finish(*inflight.popleft(), failed)
                while inflight:
                    await self._finish(*inflight.popleft(), failed)
            finally:
                for task, _ in inflight:  # the connection dropped: let handlers commit
                    with contextlib.suppress(Exception):
                        await task
            if self._stop.is_set():
                return bool(failed)
        return bool(failed)

    async def _finish(self, task: asyncio.Task, messages: list[Fetched], failed: set[int]
                      ) -> None:
        done = set(await task)
        failed.update(m.uid for m in messages if m.uid not in done)
        if done and not await self._move(sorted(done)):
            # Recorded, but still in the folder: looked at again after poll_seconds (then
            # found to be duplicates and moved), not in a tight loop.
            failed.update(done)

    async def _fetch(self, uids: list[int]) -> list[Fetched]:
        client = self._client
        assert client is not None
        limit = self.config.max_bytes + 1  # one byte more tells "too large" without the rest
        response = await self._guard(client.uid(
            "fetch", uid_set(uids), f"(UID RFC822.SIZE BODY.PEEK[]<0.{limit}>)"))
        if response.result != "OK":
            raise ConnectionLost(f"UID FETCH failed: {_text(response)}")
        found: list[Fetched] = []
        lines = response.lines
        for i, line in enumerate(lines):
            # A literal (bytearray) follows the line that announces it (bytes).
            if isinstance(line, bytearray) or not isinstance(line, bytes) or b"FETCH" not in line:
                continue
            uid, size = _UID.search(line), _SIZE.search(line)
            if uid is None or i + 1 >= len(lines) or not isinstance(lines[i + 1], bytearray):
                continue
            raw = bytes(lines[i + 1])
            found.append(Fetched(int(uid.group(1)), raw,
                                 int(size.group(1)) if size else len(raw)))
        return found

    async def _move(self, uids: list[int]) -> bool:
        client = self._client
        assert client is not None
        target = mailbox_arg(self.config.processed_folder)
        which = uid_set(uids)
        await self._guard(client.uid("store", which, "+FLAGS.SILENT (\\Seen)"))
        if client.has_capability("MOVE"):
            response = await self._guard(client.uid("move", which, target))
        else:
            response = await self._guard(client.uid("copy", which, target))
            if response.result == "OK":
                await self._guard(client.uid("store", which, "+FLAGS.SILENT (\\Deleted)"))
                if client.has_capability("UIDPLUS"):
                    await self._guard(client.uid("expunge", which))
                else:
                    await self._guard(client.expunge())
        if response.result != "OK":
            logger.warning("moving %d messages to %s failed: %s", len(uids),
                           self.config.processed_folder, _text(response))
            return False
        return True

    async def _idle(self, seconds: float) -> None:
        client = self._client
        assert client is not None
        idle = await self._guard(client.idle_start(timeout=seconds))
        stop = asyncio.ensure_future(self._stop.wait())
        lost = asyncio.ensure_future(self._lost.wait())
        try:
            while True:
                push = asyncio.ensure_future(client.wait_server_push(timeout=seconds + 5))
                await asyncio.wait({push, stop, lost}, return_when=asyncio.FIRST_COMPLETED)
                if lost.done():
                    push.cancel()
                    raise ConnectionLost("connection lost during IDLE")
                if stop.done():
                    push.cancel()
                    break
                try:
                    message = push.result()
                except TimeoutError:
                    break
                if message == aioimaplib.STOP_WAIT_SERVER_PUSH:
                    break  # our idle_seconds are up: restart IDLE
                lines = [m for m in message if isinstance(m, bytes)]
                if any(line.startswith(b"BYE") for line in lines):
                    raise ConnectionLost("server said BYE")
                if any(_PUSH_NEW.match(line) for line in lines):
                    break
        finally:
            stop.cancel()
            lost.cancel()
            if not self._lost.is_set() and client.has_pending_idle():
                client.idle_done()
                with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                    await asyncio.wait_for(asyncio.shield(idle), self.config.timeout)
        if self._lost.is_set():
            raise ConnectionLost("connection lost during IDLE")

    async def _poll_wait(self, seconds: float) -> None:
        lost = asyncio.ensure_future(self._lost.wait())
        stop = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({lost, stop}, timeout=seconds,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            lost.cancel()
            stop.cancel()
        if self._lost.is_set() and not self._stop.is_set():
            raise ConnectionLost("connection lost while waiting")


class WatcherJob:
    """The watcher as a leader's job (`await start()`, `await stop()`)."""

    def __init__(self, watcher: ImapWatcher) -> None:
        self.watcher = watcher

    async def start(self) -> None:
        self.watcher.start()

    async def stop(self) -> None:
        await self.watcher.stop()


def _text(response: Any) -> str:
    lines = getattr(response, "lines", None) or []
    last = lines[-1] if lines else b""
    return bytes(last).decode("utf-8", "replace")[:200] if isinstance(
        last, bytes | bytearray) else str(last)[:200]
