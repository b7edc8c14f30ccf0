"""Outgoing pacing against Telegram's flood limits, enforced by the Bot API fake (429s)."""

from __future__ import annotations

import asyncio
import itertools
from collections import deque

import pytest
from telegram.ext import ApplicationBuilder

from handlers.telegram.ratelimit import ChatRateLimiter, Pacer
from testkit.fake_bot_api import FakeBotApi


def most_in_one_second(times: list[float]) -> int:
    best, recent = 0, deque()
    for t in sorted(times):
        recent.append(t)
        while t - recent[0] >= 1.0:
            recent.popleft()
        best = max(best, len(recent))
    return best


async def test_the_pacer_spaces_requests_in_order_and_holds_them_during_a_pause() -> None:
    pacer = Pacer(50.0)  # 20 ms apart
    loop = asyncio.get_running_loop()
    went: list[tuple[int, float]] = []

    async def one(n: int) -> None:
        await pacer.wait()
        went.append((n, loop.time()))

    await asyncio.gather(*(one(n) for n in range(10)))
    assert [n for n, _ in went] == list(range(10))
    gaps = [b - a for (_, a), (_, b) in itertools.pairwise(went)]
    assert min(gaps) >= 0.015  # on the schedule, never two together
    pacer.pause(0.3)
    before = loop.time()
    await pacer.wait()
    assert loop.time() - before >= 0.25


async def test_the_fake_enforces_telegrams_limits_when_asked() -> None:
    async with FakeBotApi(telegram_limits=True) as api:
        app = api.application_builder().build()
        async with app:
            api.user(1)
            await app.bot.send_message(1, "a")
            with pytest.raises(Exception, match=r"(?i)flood|retry"):
                await app.bot.send_message(1, "b")  # a second one in the same second
        assert api.flood_refusals == 1
        [refused] = [r for r in api.requests if r.status == 429]
        assert refused.params["chat_id"] == 1


async def test_paced_sends_to_many_chats_get_no_429() -> None:
    async with FakeBotApi(telegram_limits=True) as api:
        builder = ApplicationBuilder().token(api.token).base_url(api.base_url)
        app = builder.rate_limiter(ChatRateLimiter(overall_max_rate=30)).build()
        async with app:
            for chat in range(1, 46):
                api.user(chat)
            await asyncio.gather(*(app.bot.send_message(chat, "hello")
                                   for chat in range(1, 46)))
        sent = [r.at for r in api.requests if r.method == "sendMessage"]
        assert api.flood_refusals == 0 and len(sent) == 45
        assert most_in_one_second(sent) <= 30
