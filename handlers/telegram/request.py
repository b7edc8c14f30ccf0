"""aiohttp transport for python-telegram-bot: a faster drop-in for the default HTTPXRequest."""

from __future__ import annotations

import json

import aiohttp
from telegram.error import NetworkError, TimedOut
from telegram.request import BaseRequest, RequestData

# PTB passes this sentinel for "use the default set on the request object".
_DefaultValue = type(BaseRequest.DEFAULT_NONE)


def _pick(value: object, default: float | None) -> float | None:
    return default if isinstance(value, _DefaultValue) else value  # type: ignore[return-value]


class AiohttpRequest(BaseRequest):
    """`BaseRequest` over one `aiohttp.ClientSession` (created in `initialize()`).

    Mirrors `HTTPXRequest`: form-encoded parameters, multipart only when files are uploaded,
    and the same timeout defaults. Use one instance for `request` and another one for
    `get_updates_request`, as PTB requires.
    """

    __slots__ = (
        "_connect_timeout",
        "_media_write_timeout",
        "_pool_size",
        "_pool_timeout",
        "_read_timeout",
        "_session",
        "_write_timeout",
    )

    def __init__(
        self,
        connection_pool_size: int = 256,
        read_timeout: float | None = 5.0,
        write_timeout: float | None = 5.0,
        connect_timeout: float | None = 5.0,
        pool_timeout: float | None = 1.0,
        media_write_timeout: float | None = 20.0,
    ) -> None:
        self._pool_size = connection_pool_size
        self._read_timeout = read_timeout
        self._write_timeout = write_timeout
        self._connect_timeout = connect_timeout
        self._pool_timeout = pool_timeout
        self._media_write_timeout = media_write_timeout
        self._session: aiohttp.ClientSession | None = None

    @property
    def read_timeout(self) -> float | None:
        # Bot.get_updates adds the long-poll `timeout` to this value.
        return self._read_timeout

    async def initialize(self) -> None:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=self._pool_size, limit_per_host=0)
            self._session = aiohttp.ClientSession(
                connector=connector, headers={"User-Agent": self.USER_AGENT}
            )

    async def shutdown(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None

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
        if self._session is None or self._session.closed:
            raise RuntimeError("This AiohttpRequest is not initialized!")
        uploads = request_data is not None and request_data.contains_files
        read = _pick(read_timeout, self._read_timeout)
        write = _pick(write_timeout, self._media_write_timeout if uploads else self._write_timeout)
        connect = _pick(connect_timeout, self._connect_timeout)
        pool = _pick(pool_timeout, self._pool_timeout)
        parts = (read, write, connect, pool)
        timeout = aiohttp.ClientTimeout(
            # aiohttp has no write timeout: bound the whole exchange by the sum of all four
            # instead, so a stalled upload still ends.
            total=None if None in parts else sum(parts),  # type: ignore[arg-type]
            # aiohttp's `connect` covers waiting for a pooled connection plus connecting.
            connect=None if connect is None or pool is None else connect + pool,
            sock_connect=connect,
            sock_read=read,
        )
        headers = None
        data: aiohttp.FormData | bytes | None = None
        if request_data is not None and uploads:
            # quote_fields=False sends UTF-8 file names as they are, as httpx does.
            form = aiohttp.FormData(quote_fields=False)
            for name, value in request_data.json_parameters.items():
                form.add_field(name, value)
            for name, (filename, content, mime) in request_data.multipart_data.items():
                form.add_field(name, content, filename=filename, content_type=mime)
            data = form
        elif request_data is not None:
            data = request_data.url_encoded_parameters().encode()
            headers = {"Content-Type": "application/x-www-form-urlencoded"}
        try:
            async with self._session.request(
                method, url, data=data, headers=headers, timeout=timeout
            ) as response:
                return response.status, await response.read()
        except TimeoutError as exc:  # aiohttp's timeout errors subclass TimeoutError
            raise TimedOut from exc
        except aiohttp.ClientError as exc:
            raise NetworkError(f"aiohttp.{type(exc).__name__}: {exc}") from exc


class RawUpdatesRequest(BaseRequest):
    """Wraps the `get_updates_request` to keep each update exactly as Telegram sent it, by
    update_id: the parsed JSON and its text (`pop_raw`), so the bot can log the raw payload
    without re-serializing PTB's objects. Bounded: entries nobody asked for are forgotten
    oldest first."""

    __slots__ = ("_inner", "_max_kept", "_raw")

    def __init__(self, inner: BaseRequest, *, max_kept: int = 10_000) -> None:
        self._inner = inner
        self._raw: dict[int, tuple[dict, str]] = {}
        self._max_kept = max_kept

    @property
    def read_timeout(self) -> float | None:
        return self._inner.read_timeout

    async def initialize(self) -> None:
        await self._inner.initialize()

    async def shutdown(self) -> None:
        await self._inner.shutdown()

    async def do_request(self, url: str, method: str, request_data: RequestData | None = None,
                         read_timeout: object = BaseRequest.DEFAULT_NONE,
                         write_timeout: object = BaseRequest.DEFAULT_NONE,
                         connect_timeout: object = BaseRequest.DEFAULT_NONE,
                         pool_timeout: object = BaseRequest.DEFAULT_NONE) -> tuple[int, bytes]:
        status, body = await self._inner.do_request(
            url, method, request_data, read_timeout,  # type: ignore[arg-type]
            write_timeout, connect_timeout, pool_timeout)  # type: ignore[arg-type]
        if status == 200 and url.endswith("/getUpdates"):
            for update, text in split_updates(body):
                self._raw[update["update_id"]] = (update, text)
            while len(self._raw) > self._max_kept:
                del self._raw[next(iter(self._raw))]
        return status, body

    def pop_raw(self, update_id: int) -> tuple[dict, str] | None:
        return self._raw.pop(update_id, None)

    def keep(self, update_id: int, update: dict, text: str) -> None:
        """An update that came another way (a webhook delivery), for pop_raw."""
        self._raw[update_id] = (update, text)
        while len(self._raw) > self._max_kept:
            del self._raw[next(iter(self._raw))]

    def forget(self, update_id: int) -> None:
        self._raw.pop(update_id, None)


_DECODER = json.JSONDecoder()
_SPACE = " \t\r\n,"


def split_updates(body: bytes) -> list[tuple[dict, str]]:
    """(update, its JSON text) for each update of a getUpdates answer, in one parsing pass;
    [] when the answer is not the expected shape."""
    text = body.decode("utf-8", "replace")
    start = text.find('"result"')
    start = text.find("[", start) if start >= 0 else -1
    if start < 0:
        return []
    out = []
    at = start + 1
    try:
        while True:
            while at < len(text) and text[at] in _SPACE:
                at += 1
            if at >= len(text) or text[at] == "]":
                return out
            update, end = _DECODER.raw_decode(text, at)
            if isinstance(update, dict) and isinstance(update.get("update_id"), int):
                out.append((update, text[at:end]))
            at = end
    except ValueError:
        return out
