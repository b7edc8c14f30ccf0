"""Outgoing rate limits: PTB's AIORateLimiter (overall, groups) plus spacing per private chat."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from telegram.ext import AIORateLimiter

logger = logging.getLogger(__name__)

Clock = Callable[[], float]
_UNPACED = frozenset({"sendChatAction", "getChat", "getChatMember", "leaveChat"})
Sleep = Callable[[float], Awaitable[None]]


class ChatPacer:
    """At most `rate` messages per second per chat, with bursts of up to `burst` (GCRA).

    Each call reserves the chat's next slot before sleeping, so callers queue fairly and
    nothing is ever refused, only delayed.
    """

    def __init__(self, rate: float, burst: int = 3, *, clock: Clock = time.monotonic,
                 sleep: Sleep = asyncio.sleep, max_chats: int = 50_000) -> None:
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self.burst = max(1, burst)
        self._clock = clock
        self._sleep = sleep
        self._max_chats = max_chats
        self._next: dict[int | str, float] = {}  # theoretical arrival time per chat

    @property
    def enabled(self) -> bool:
        return self.interval > 0

    def reserve(self, chat: int | str) -> float:
        """Seconds to wait before sending to `chat` (and book that slot)."""
        now = self._clock()
        tat = max(self._next.get(chat, now), now)
        delay = tat - now - (self.burst - 1) * self.interval
        if len(self._next) >= self._max_chats:
            self._next = {k: v for k, v in self._next.items() if v > now}
        self._next[chat] = tat + self.interval
        return max(0.0, delay)

    async def wait(self, chat: int | str) -> None:
        delay = self.reserve(chat)
        if delay > 0:
            await self._sleep(delay)


class ChatRateLimiter(AIORateLimiter):
    """AIORateLimiter (about 30 requests/s with a chat_id, 20/min per group) that also paces
    private chats to about one message per second, as Telegram asks.

    A 429 that still happens pauses every request for retry_after and is retried (a flood
    limit is usually bot-wide); after `max_retries` it surfaces as RetryAfter, and the sender
    waits and tries again, so nothing is dropped.
    """

    def __init__(self, *, overall_max_rate: float = 30, chat_rate: float = 1.0,
                 chat_burst: int = 3, max_retries: int = 2) -> None:
        super().__init__(overall_max_rate=overall_max_rate, max_retries=max_retries)
        self.pacer = ChatPacer(chat_rate, chat_burst)

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
        if self.pacer.enabled and endpoint not in _UNPACED and _is_private(chat_id):
            await self.pacer.wait(int(chat_id))  # type: ignore[arg-type]
        return await super().process_request(callback, args, kwargs, endpoint, data,
                                             rate_limit_args)


def _is_private(chat_id: Any) -> bool:
    """Private chats have positive ids; groups and channels negative ids or @names."""
    try:
        return int(chat_id) > 0
    except (TypeError, ValueError):
        return False
