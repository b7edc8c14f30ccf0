"""Outgoing rate limits: PTB's AIORateLimiter (overall, groups), aiolimiter per private chat."""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Coroutine
from typing import Any

from aiolimiter import AsyncLimiter
from telegram.ext import AIORateLimiter

logger = logging.getLogger(__name__)

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


class ChatRateLimiter(AIORateLimiter):
    """AIORateLimiter (about 30 requests/s with a chat_id, 20/min per group) that also paces
    private chats to about one message per second, as Telegram asks (AIORateLimiter does not).

    A 429 that still happens pauses every request for retry_after and is retried (a flood
    limit is usually bot-wide); after `max_retries` it surfaces as RetryAfter, and the sender
    waits and tries again, so nothing is dropped.
    """

    def __init__(self, *, overall_max_rate: float = 30, chat_rate: float = 1.0,
                 chat_burst: int = 3, max_retries: int = 2) -> None:
        super().__init__(overall_max_rate=overall_max_rate, max_retries=max_retries)
        self.chats = ChatLimiters(chat_rate, chat_burst)

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
        if self.chats.enabled and endpoint not in _UNPACED and _is_private(chat_id):
            await self.chats.wait(int(chat_id))  # type: ignore[arg-type]
        return await super().process_request(callback, args, kwargs, endpoint, data,
                                             rate_limit_args)


def _is_private(chat_id: Any) -> bool:
    """Private chats have positive ids; groups and channels negative ids or @names."""
    try:
        return int(chat_id) > 0
    except (TypeError, ValueError):
        return False
