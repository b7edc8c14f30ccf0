"""A lean HTTP/1.1 keep-alive transport for python-telegram-bot (JSON bodies, no uploads).

The Bot API is one host, small JSON requests and Content-Length answers: a general client
(aiohttp) spends ~320 µs of CPU per call on features it does not need, this one ~150 µs, and
capbot makes two or three calls per conversation turn. Multipart uploads (the export document)
and anything unusual go through `AiohttpRequest`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import time
from collections import deque
from typing import Any
from urllib.parse import urlsplit

from telegram.error import NetworkError, TimedOut
from telegram.request import BaseRequest, RequestData

from handlers.telegram.request import AiohttpRequest

logger = logging.getLogger(__name__)

_DefaultValue = type(BaseRequest.DEFAULT_NONE)
MAX_HEADER = 64 * 1024
MAX_BODY = 64 * 2**20  # getFile downloads are at most 20 MB
IDLE_SECONDS = 30.0  # servers drop idle keep-alive connections; do not reuse older ones


class _ProtocolError(Exception):
    pass


class _Connection(asyncio.Protocol):
    """One keep-alive connection: one request at a time, the answer parsed as it arrives."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.reusable = True
        self.idle_since = time.monotonic()
        self._buffer = bytearray()
        self._waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self._head: tuple[int, int, int | None, bool] | None = None  # status, start, len, chunked

    # asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        waiter = self._waiter
        if waiter is None or waiter.done():
            if waiter is None:  # bytes nobody asked for: the connection is out of step
                self.reusable = False
            return
        try:
            result = self._parse()
        except _ProtocolError as exc:
            self.reusable = False
            waiter.set_exception(exc)
            return
        if result is not None:
            waiter.set_result(result)

    def eof_received(self) -> bool:
        waiter = self._waiter
        self.reusable = False
        if waiter is not None and not waiter.done():
            head = self._head
            if head is not None and head[2] is None and not head[3]:  # body until close
                waiter.set_result((head[0], bytes(self._buffer[head[1]:])))
            else:
                waiter.set_exception(ConnectionResetError("connection closed by the server"))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.reusable = False
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc or ConnectionResetError("connection lost"))

    # one exchange

    async def exchange(self, request: bytes) -> tuple[int, bytes]:
        assert self.transport is not None
        self._buffer.clear()
        self._head = None
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            self.transport.write(request)
            return await self._waiter
        finally:
            self._waiter = None
            self.idle_since = time.monotonic()

    def close(self) -> None:
        self.reusable = False
        if self.transport is not None and not self.closed:
            self.transport.close()
        self.closed = True

    def _parse(self) -> tuple[int, bytes] | None:
        buffer = self._buffer
        if self._head is None:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(buffer) > MAX_HEADER:
                    raise _ProtocolError("response header too large")
                return None
            lines = bytes(buffer[:end]).split(b"\r\n")
            try:
                version, code = lines[0].split(b" ", 2)[:2]
                status = int(code)
            except ValueError:
                raise _ProtocolError(f"bad status line {lines[0][:60]!r}") from None
            length, chunked = None, False
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"transfer-encoding":
                    chunked = b"chunked" in value.lower()
                elif name == b"connection" and value.strip().lower() == b"close":
                    self.reusable = False
            if version != b"HTTP/1.1":
                self.reusable = False
            if 100 <= status < 200:  # interim answer: skip it
                del buffer[:end + 4]
                return self._parse()
            if length is None and not chunked:
                self.reusable = False  # body until the server closes
            self._head = (status, end + 4, length, chunked)
        status, start, length, chunked = self._head
        if chunked:
            body = _dechunk(buffer, start)
            return None if body is None else (status, body)
        if length is None:
            if len(buffer) - start > MAX_BODY:
                raise _ProtocolError("response too large")
            return None  # completed by eof_received()
        if len(buffer) - start < length:
            return None
        return status, bytes(buffer[start:start + length])


def _dechunk(buffer: bytearray, start: int) -> bytes | None:
    """The body of a complete chunked answer, or None while parts are missing."""
    out = bytearray()
    at = start
    while True:
        end = buffer.find(b"\r\n", at)
        if end < 0:
            return None
        try:
            size = int(bytes(buffer[at:end]).split(b";")[0], 16)
        except ValueError:
            raise _ProtocolError("bad chunk size") from None
        if size == 0:
            return bytes(out) if buffer.find(b"\r\n", end + 2) >= 0 else None
        if len(buffer) < end + 2 + size + 2:
            return None
        out += buffer[end + 2:end + 2 + size]
        if len(out) > MAX_BODY:
            raise _ProtocolError("response too large")
        at = end + 2 + size + 2


class _Pool:
    """Connections to one origin: reuse idle ones, open up to `size`."""

    def __init__(self, scheme: str, host: str, port: int, size: int) -> None:
        self.scheme, self.host, self.port = scheme, host, port
        self.host_header = host if port in (80, 443) else f"{host}:{port}"
        self._idle: deque[_Connection] = deque()
        self._slots = asyncio.Semaphore(size)
        self._ssl = ssl.create_default_context() if scheme == "https" else None

    async def acquire(self, limit: float | None) -> _Connection:
        async with asyncio.timeout(limit):
            await self._slots.acquire()
        try:
            now = time.monotonic()
            while self._idle:
                conn = self._idle.pop()
                if not conn.closed and conn.reusable and now - conn.idle_since < IDLE_SECONDS:
                    return conn
                conn.close()
            loop = asyncio.get_running_loop()
            async with asyncio.timeout(limit):
                _, conn = await loop.create_connection(
                    _Connection, self.host, self.port, ssl=self._ssl,
                    server_hostname=self.host if self._ssl else None)
            return conn
        except BaseException:
            self._slots.release()
            raise

    def release(self, conn: _Connection, *, reuse: bool) -> None:
        if reuse and conn.reusable and not conn.closed:
            self._idle.append(conn)
        else:
            conn.close()
        self._slots.release()

    def close(self) -> None:
        while self._idle:
            self._idle.pop().close()


class JsonRequestData(RequestData):
    """Parameters that already are plain JSON values (no PTB objects, no files): skips PTB's
    per-parameter conversion, for calls built from JSON (`TelegramSender.api`)."""

    __slots__ = ("_plain",)

    def __init__(self, parameters: dict[str, Any]) -> None:
        super().__init__()
        self._plain = parameters

    @property
    def parameters(self) -> dict[str, Any]:  # type: ignore[override]
        return self._plain

    @property
    def json_parameters(self) -> dict[str, str]:
        return {k: v if isinstance(v, str) else json.dumps(v) for k, v in self._plain.items()}


def _pick(value: object, default: float | None) -> float | None:
    return default if isinstance(value, _DefaultValue) else value  # type: ignore[return-value]


class Http11Request(BaseRequest):
    """`BaseRequest` over `_Connection` pools; same timeouts as `AiohttpRequest`. Parameters
    go as one JSON object (native types, one encoding pass); uploads use aiohttp."""

    __slots__ = ("_connect_timeout", "_pool_size", "_pool_timeout", "_pools", "_read_timeout",
                 "_routes", "_uploads", "_write_timeout")

    def __init__(self, connection_pool_size: int = 256, read_timeout: float | None = 5.0,
                 write_timeout: float | None = 5.0, connect_timeout: float | None = 5.0,
                 pool_timeout: float | None = 1.0, media_write_timeout: float | None = 20.0
                 ) -> None:
        self._pool_size = connection_pool_size
        self._read_timeout = read_timeout
        self._write_timeout = write_timeout
        self._connect_timeout = connect_timeout
        self._pool_timeout = pool_timeout
        self._pools: dict[tuple[str, str, int], _Pool] = {}
        self._routes: dict[str, tuple[_Pool, str]] = {}
        self._uploads = AiohttpRequest(connection_pool_size=8, read_timeout=read_timeout,
                                       write_timeout=write_timeout,
                                       connect_timeout=connect_timeout,
                                       pool_timeout=pool_timeout,
                                       media_write_timeout=media_write_timeout)

    @property
    def read_timeout(self) -> float | None:
        return self._read_timeout

    async def initialize(self) -> None:
        await self._uploads.initialize()

    async def shutdown(self) -> None:
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()
        await self._uploads.shutdown()

    def _route(self, url: str) -> tuple[_Pool, str]:
        """(connection pool, request target) for a URL; the last few are remembered."""
        found = self._routes.get(url)
        if found is not None:
            return found
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise NetworkError(f"unsupported URL {url[:80]!r}")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        key = (parts.scheme, parts.hostname, port)
        pool = self._pools.get(key)
        if pool is None:
            pool = self._pools[key] = _Pool(parts.scheme, parts.hostname, port, self._pool_size)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        if len(self._routes) > 256:  # file URLs and queries vary; method URLs do not
            self._routes.clear()
        self._routes[url] = (pool, target)
        return pool, target

    async def do_request(
        self,
        url: str,
        method: str,
        request_data: RequestData | None = None,
        read_timeout: object = BaseRequest.DEFAULT_NONE,
        write_timeout: object = BaseRequest.DEFAULT_NONE,
        connect_timeout: object = BaseRequest.DEFAULT_NONE,
        pool_timeout: object = BaseRequest.DEFAULT_NONE,
    ) -> tuple[int, bytes]:
        if request_data is not None and request_data.contains_files:
            return await self._uploads.do_request(url, method, request_data, read_timeout,
                                                  write_timeout, connect_timeout, pool_timeout)
        pool, target = self._route(url)
        body = b""
        if request_data is not None:
            body = json.dumps(request_data.parameters, ensure_ascii=False,
                              separators=(",", ":")).encode()
        head = (f"{method} {target} HTTP/1.1\r\nHost: {pool.host_header}\r\n"
                f"User-Agent: {self.USER_AGENT}\r\nAccept: application/json\r\n")
        if request_data is not None or method == "POST":
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        request = (head + "\r\n").encode("latin-1") + body
        read = _pick(read_timeout, self._read_timeout)
        write = _pick(write_timeout, self._write_timeout)
        connect = _pick(connect_timeout, self._connect_timeout)
        waiting = _pick(pool_timeout, self._pool_timeout)
        limits = (read, write, connect, waiting)
        total = None if None in limits else sum(limits)  # type: ignore[arg-type]
        connect_limit = None if connect is None or waiting is None else connect + waiting
        try:
            conn = await pool.acquire(connect_limit)
        except TimeoutError as exc:
            raise TimedOut("Pool timeout: no connection available in time") from exc
        except OSError as exc:
            raise NetworkError(f"connect to {pool.host_header} failed: {exc}") from exc
        reuse = False
        try:
            async with asyncio.timeout(total):
                status, payload = await conn.exchange(request)
            reuse = True
            return status, payload
        except TimeoutError as exc:
            raise TimedOut from exc
        except (OSError, _ProtocolError, ssl.SSLError) as exc:
            raise NetworkError(f"http11.{type(exc).__name__}: {exc}") from exc
        finally:
            pool.release(conn, reuse=reuse)

