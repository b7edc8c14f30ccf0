"""Inbound throttle: past a per-chat rate, updates are recorded but not answered."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Literal

Verdict = Literal["pass", "notice", "quiet"]


class InboundThrottle:
    """At most `limit` updates per `window` seconds per chat are answered (a sliding window).

    Every update counts, answered or not, so a chat that keeps flooding stays throttled and
    is answered again once its rate has fallen below the limit. The first update over the
    limit gets a notice ("notice"), the rest of that episode nothing ("quiet").

    Kept in memory, per process: after a restart a flooding chat gets `limit` answers and one
    notice again, which is harmless.
    """

    def __init__(self, limit: int, window: float, *, clock: Callable[[], float] = time.monotonic,
                 max_chats: int = 100_000) -> None:
        self.limit = limit
        self.window = window
        self._clock = clock
        self._max_chats = max_chats
        self._recent: dict[int | str, deque[float]] = {}  # the last `limit` arrivals
        self._noticed: set[int | str] = set()  # chats told in the current episode

    @property
    def enabled(self) -> bool:
        return self.limit > 0 and self.window > 0

    def check(self, chat: int | str) -> Verdict:
        if not self.enabled:
            return "pass"
        now = self._clock()
        recent = self._recent.get(chat)
        if recent is None:
            if len(self._recent) >= self._max_chats:
                self._forget_idle(now)
            recent = self._recent[chat] = deque(maxlen=self.limit)
        over = len(recent) == self.limit and now - recent[0] < self.window
        recent.append(now)
        if not over:
            self._noticed.discard(chat)
            return "pass"
        if chat in self._noticed:
            return "quiet"
        self._noticed.add(chat)
        return "notice"

    def _forget_idle(self, now: float) -> None:
        idle = [c for c, r in self._recent.items() if not r or now - r[-1] >= self.window]
        for chat in idle:
            del self._recent[chat]
            self._noticed.discard(chat)
