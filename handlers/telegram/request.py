"""aiohttp transport for python-telegram-bot, with an outbound proxy; Telegram's flood wait.

PTB ships only `HTTPXRequest`; `BaseRequest` is its documented extension point. Measured in
benchmarks/telegram_echo.py and docs/telegram.md: httpx costs several times the CPU per call.
"""

from __future__ import annotations

import json
import warnings
from datetime import timedelta
from typing import Any

import aiohttp
from aiohttp.helpers import get_env_proxy_for_url
from telegram import Bot
from telegram.error import NetworkError, RetryAfter, TimedOut
from telegram.request import BaseRequest, RequestData
from telegram.warnings import PTBDeprecationWarning, PTBUserWarning
from yarl import URL

# PTB passes this sentinel for "use the default set on the request object".
_DefaultValue = type(BaseRequest.DEFAULT_NONE)


# The methods capbot calls with plain JSON (see call_json); PTB suggests its typed methods.
JSON_METHODS = ("getUpdates", "sendMessage", "editMessageText", "editMessageReplyMarkup")
warnings.filterwarnings(
    "ignore", message=rf"Please use 'Bot\.({'|'.join(JSON_METHODS)})'", category=PTBUserWarning)


async def call_json(bot: Bot, method: str, params: dict[str, Any], **timeouts: Any) -> Any:
    """A Bot API call with plain JSON in and out, through `Bot.do_api_request`: PTB's public
    call, with its request encoding, rate limiter and error mapping, minus its object model.
    Used where the objects cost most of the bot's CPU (telegram_bench, profiled: Message.de_json
    of every sent or edited message was ~1.5 ms a turn; getUpdates hands the unconfirmed
    updates out again on every poll)."""
    return await bot.do_api_request(
        method, api_kwargs={k: v for k, v in params.items() if v is not None}, **timeouts)


def _pick(value: object, default: float | None) -> float | None:
    return default if isinstance(value, _DefaultValue) else value  # type: ignore[return-value]


def retry_after_seconds(exc: RetryAfter) -> float:
    """Seconds a 429 asks to wait. PTB 22 returns an int with a deprecation warning, or a
    timedelta once PTB_TIMEDELTA is set; either is read here through the public property."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PTBDeprecationWarning)
        value = exc.retry_after
    return max(0.0, value.total_seconds() if isinstance(value, timedelta) else float(value))


class AiohttpRequest(BaseRequest):
    """`BaseRequest` over one `aiohttp.ClientSession` (created in `initialize()`).

    Mirrors `HTTPXRequest`: form-encoded parameters, multipart only when files are uploaded,
    and the same timeout defaults. Use one instance for `request` and another one for
    `get_updates_request`, as PTB requires.

    Proxy: `proxy` (CAPBOT_TELEGRAM_PROXY) if given, else the standard environment variables
    (HTTPS_PROXY/https_proxy for Telegram's https URL, HTTP_PROXY for http, NO_PROXY), which
    aiohttp's own helper reads (once per origin).
    """

    __slots__ = (
        "_connect_timeout",
        "_env_proxies",
        "_media_write_timeout",
        "_pool_size",
        "_pool_timeout",
        "_proxy",
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
        proxy: str | None = None,
    ) -> None:
        self._pool_size = connection_pool_size
        self._read_timeout = read_timeout
        self._write_timeout = write_timeout
        self._connect_timeout = connect_timeout
        self._pool_timeout = pool_timeout
        self._media_write_timeout = media_write_timeout
        self._proxy = proxy or None
        self._env_proxies: dict[str, tuple[str | None, aiohttp.BasicAuth | None]] = {}
        self._session: aiohttp.ClientSession | None = None

    @property
    def read_timeout(self) -> float | None:
        # Bot.get_updates adds the long-poll `timeout` to this value.
        return self._read_timeout

    @property
    def proxy(self) -> str | None:
        return self._proxy

    async def initialize(self) -> None:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=self._pool_size, limit_per_host=0)
            self._session = aiohttp.ClientSession(
                connector=connector, headers={"User-Agent": self.USER_AGENT},
                proxy=self._proxy)

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
            # A JSON body (the Bot API takes one): one json.dumps instead of urlencoding each
            # parameter, the largest cost in the transport when profiled.
            data = json.dumps(request_data.parameters, ensure_ascii=False,
                              separators=(",", ":")).encode()
            headers = {"Content-Type": "application/json"}
        try:
            proxy, proxy_auth = (self._proxy, None) if self._proxy else self._env_proxy(url)
            async with self._session.request(
                method, url, data=data, headers=headers, timeout=timeout, proxy=proxy,
                proxy_auth=proxy_auth,
            ) as response:
                return response.status, await response.read()
        except TimeoutError as exc:  # aiohttp's timeout errors subclass TimeoutError
            raise TimedOut from exc
        except aiohttp.ClientError as exc:
            raise NetworkError(f"aiohttp.{type(exc).__name__}: {exc}") from exc

    def _env_proxy(self, url: str) -> tuple[str | None, aiohttp.BasicAuth | None]:
        """The environment's proxy for this URL's origin, looked up once per origin (aiohttp's
        trust_env reads the whole environment on every request)."""
        origin = URL(url).origin()
        key = str(origin)
        found = self._env_proxies.get(key)
        if found is None:
            try:
                proxy, auth = get_env_proxy_for_url(origin)
                found = (str(proxy), auth)
            except LookupError:
                found = (None, None)
            self._env_proxies[key] = found
        return found
