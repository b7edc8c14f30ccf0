"""Outgoing rate limits: even pacing overall, aiolimiter per private chat, PTB's AIORateLimiter
for groups."""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable, Coroutine
from typing import Any

from aiolimiter import AsyncLimiter
from telegram.error import RetryAfter
from telegram.ext import AIORateLimiter

from handlers.telegram.request import retry_after_seconds

logger = logging.getLogger(__name__)

PACING = 0.95  # of Telegram's ~30 messages/s per bot
_UNPACED = frozenset({"sendChatAction", "getChat", "getChatMember", "leaveChat",
                      "answerCallbackQuery"})


class ChatLimiters:
    """One `aiolimiter.AsyncLimiter` per chat: bursts of `burst`, then `rate` per second.

    Nothing is refused, only delayed. Bounded: past `max_chats`, the chats whose bucket has
    drained (idle) are forgotten, which loses nothing (a drained bucket is a fresh one).
    """

    def __init__(self, rate: float, burst: int = 3, *, max_chats: int = 50_000) -> None:
        self.rate = rate
        self.burst = max(1, burst)
        self._max_chats = max_chats
        self._limiters: OrderedDict[int, AsyncLimiter] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def limiter(self, chat: int) -> AsyncLimiter:
        limiter = self._limiters.get(chat)
        if limiter is None:
            if len(self._limiters) >= self._max_chats:
                self._forget_idle()
            limiter = self._limiters[chat] = AsyncLimiter(self.burst, self.burst / self.rate)
        else:
            self._limiters.move_to_end(chat)
        return limiter

    async def wait(self, chat: int) -> None:
        await self.limiter(chat).acquire()

    def _forget_idle(self) -> None:
        idle = [c for c, lim in self._limiters.items() if lim.has_capacity(self.burst)]
        for chat in idle:
            del self._limiters[chat]
        while len(self._limiters) >= self._max_chats:  # all busy: drop the least recent
            self._limiters.popitem(last=False)

    def __len__(self) -> int:
        return len(self._limiters)


class Pacer:
    """One request at a time, at least `1/rate` s after the previous one went, in order of
    arrival; `pause` holds every later one back for a flood wait.

    aiolimiter (and so AIORateLimiter) is a leaky bucket: after a quiet moment it lets a
    whole bucket through at once, and PTB's limiter keeps handing out slots during a 429
    pause, which then all go together. Telegram counts the messages of any one second, so
    both bursts cost 429s (measured against a Bot API enforcing 30/s: 35 in 300 reminders
    with the bucket). Spacing is measured from when the previous request was let go, so a
    busy event loop that wakes late never lets two go together either.
    """

    def __init__(self, rate: float) -> None:
        self.interval = 1.0 / rate
        self._last = float("-inf")  # loop time the previous request was let go
        self._lock = asyncio.Lock()  # FIFO

    async def wait(self) -> None:
        loop = asyncio.get_running_loop()
        async with self._lock:
            target = self._last + self.interval
            delay = target - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            now = loop.time()
            # Woken a little late (timer granularity): the next slot stays on the schedule,
            # so the rate is the one asked for. Woken much later (a busy loop): from now.
            self._last = target if now - target < self.interval / 4 else now

    def pause(self, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        self._last = max(self._last, loop.time() + seconds - self.interval)


class ChatRateLimiter(AIORateLimiter):
    """Telegram's flood limits, outgoing: about 30 messages/s per bot as evenly spaced slots
    (`Pacer`, at PACING of the limit: a margin for network jitter), about one a second per
    private chat (aiolimiter, short bursts allowed), and PTB's AIORateLimiter for groups
    (20 a minute).

    A 429 that still happens pauses every later slot for retry_after and the request is
    tried again; after `max_retries` it surfaces as RetryAfter, and the sender waits and
    tries again, so nothing is dropped.
    """

    def __init__(self, *, overall_max_rate: float = 30, chat_rate: float = 1.0,
                 chat_burst: int = 3, max_retries: int = 2) -> None:
        # PTB's own overall limiter and retries are off: the pacer and the loop below do both.
        super().__init__(overall_max_rate=0, max_retries=0)
        self.overall_rate = overall_max_rate * PACING
        self.pacer = Pacer(self.overall_rate) if self.overall_rate > 0 else None
        self.chats = ChatLimiters(chat_rate, chat_burst)
        self.max_retries = max_retries

    async def process_request(
        self,
        callback: Callable[..., Coroutine[Any, Any, bool | dict[str, Any] | list[Any]]],
        args: Any,
        kwargs: dict[str, Any],
        endpoint: str,
        data: dict[str, Any],
        rate_limit_args: int | None,
    ) -> bool | dict[str, Any] | list[Any]:
        chat_id = data.get("chat_id")
        paced = chat_id is not None and endpoint not in _UNPACED
        if paced and self.chats.enabled and _is_private(chat_id):
            await self.chats.wait(int(chat_id))  # type: ignore[arg-type]
        retries = rate_limit_args or self.max_retries
        for attempt in range(retries + 1):
            if paced and self.pacer is not None:
                await self.pacer.wait()
            try:
                if _is_private(chat_id) or chat_id is None:
                    return await callback(*args, **kwargs)
                # groups and channels: PTB's limiter of 20 messages a minute per group
                return await super().process_request(callback, args, kwargs, endpoint, data,
                                                     rate_limit_args)
            except RetryAfter as exc:
                delay = retry_after_seconds(exc)
                if self.pacer is not None:
                    self.pacer.pause(delay + 0.1)
                if attempt == retries:
                    raise
                logger.info("flood control (429): every send waits %.1fs", delay)
                if self.pacer is None:
                    await asyncio.sleep(delay + 0.1)
        raise AssertionError("unreachable")


def _is_private(chat_id: Any) -> bool:
    """Private chats have positive ids; groups and channels negative ids or @names."""
    try:
        return int(chat_id) > 0
    except (TypeError, ValueError):
        return False
