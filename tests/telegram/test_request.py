"""The Bot API transport: capbot's Telegram traffic through an outbound HTTP proxy, named by
CAPBOT_TELEGRAM_PROXY or by the standard environment variables."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta

import aiohttp
import pytest
from aiohttp import web
from telegram.error import RetryAfter

from handlers.telegram.request import retry_after_seconds
from tests.telegram.harness import is_question, press_code, running

pytestmark = pytest.mark.filterwarnings("ignore:.*retry_after:DeprecationWarning")


@asynccontextmanager
async def forward_proxy() -> AsyncIterator[tuple[str, list[str]]]:
    """A plain HTTP forward proxy on loopback; yields its URL and the URLs it forwarded."""
    seen: list[str] = []
    session = aiohttp.ClientSession()

    async def forward(request: web.Request) -> web.Response:
        target = str(request.url)  # absolute-form request line; Host names the target
        seen.append(target)
        headers = {k: v for k, v in request.headers.items()
                   if k.lower() not in ("host", "proxy-connection", "content-length")}
        async with session.request(request.method, target, headers=headers,
                                   data=await request.read()) as answer:
            return web.Response(status=answer.status, body=await answer.read(),
                                content_type=answer.content_type)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", forward)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}", seen
    finally:
        await runner.cleanup()
        await session.close()


async def _conversation_through(proxy_seen: list[str], bot) -> None:
    user = bot.api.user(7301, language_code="en")
    await bot.step(lambda: user.send_command("/start"))
    await bot.step(lambda: press_code(user, "en"))
    assert is_question(user.last_message)
    methods = {url.rsplit("/", 1)[-1] for url in proxy_seen}
    assert {"getMe", "getUpdates", "sendMessage", "editMessageText"} <= methods
    assert all(url.startswith(bot.api.base_url) for url in proxy_seen)


async def test_bot_api_through_the_configured_proxy(make_app, sqlite_url, api,
                                                    monkeypatch) -> None:
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "NO_PROXY",
                 "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    async with forward_proxy() as (url, seen), \
            running(make_app, sqlite_url, api, telegram_proxy=url) as bot:
        await _conversation_through(seen, bot)


async def test_bot_api_through_the_proxy_of_the_environment(make_app, sqlite_url, api,
                                                            monkeypatch) -> None:
    """aiohttp's trust_env: HTTPS_PROXY for Telegram's https URL; the fake is http, so the
    same mechanism is exercised through HTTP_PROXY here."""
    for name in ("NO_PROXY", "no_proxy", "HTTPS_PROXY", "https_proxy", "http_proxy"):
        monkeypatch.delenv(name, raising=False)
    async with forward_proxy() as (url, seen):
        monkeypatch.setenv("HTTP_PROXY", url)
        async with running(make_app, sqlite_url, api) as bot:
            await _conversation_through(seen, bot)


def test_the_environment_names_the_proxy_for_telegrams_https_url(monkeypatch) -> None:
    from aiohttp.helpers import get_env_proxy_for_url
    from yarl import URL

    for name in ("NO_PROXY", "no_proxy", "HTTP_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    proxy, _ = get_env_proxy_for_url(URL("https://api.telegram.org/bot1:x/getMe"))
    assert str(proxy) == "http://proxy.example:3128"


def test_a_bad_proxy_setting_is_refused(monkeypatch) -> None:
    from pydantic import ValidationError

    from bot.config import Settings

    with pytest.raises(ValidationError, match="telegram_proxy"):
        Settings(telegram_proxy="socks5://127.0.0.1:1080")


def test_retry_after_read_through_the_public_property() -> None:
    assert retry_after_seconds(RetryAfter(7)) == 7.0
    assert retry_after_seconds(RetryAfter(timedelta(seconds=3))) == 3.0
