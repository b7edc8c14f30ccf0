"""Update processor for PTB: different chats run concurrently, one chat's updates in order."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Any

from telegram import Update
from telegram.ext import BaseUpdateProcessor

logger = logging.getLogger(__name__)

# PTB's own semaphore is taken before do_process_update(), so updates queued behind a busy chat
# would hold slots that other chats need. It is made wide; the real bound is applied after the
# chat's turn has come.
_OUTER_SLOTS = 1 << 20


class PerChatUpdateProcessor(BaseUpdateProcessor):
    """Processes up to `max_concurrent` updates at once, those of one chat one at a time, in
    the order they arrived (`concurrent_updates=True` alone lets a fast reply overtake a slow
    one in the same chat).

    A chat's waiting updates do not occupy processing slots, so one chat sending a burst cannot
    starve the others. Updates without a chat (inline queries, polls) are not serialized.
    """

    def __init__(self, max_concurrent: int = 256) -> None:
        super().__init__(_OUTER_SLOTS)
        self.max_concurrent = max_concurrent
        self._slots = asyncio.Semaphore(max_concurrent)
        self._locks: dict[int, asyncio.Lock] = {}
        self._users: dict[int, int] = {}  # holders + waiters per chat, to forget idle chats

    @staticmethod
    def chat_key(update: object) -> int | None:
        if isinstance(update, Update):
            chat = update.effective_chat
            if chat is not None:
                return chat.id
        return None

    async def do_process_update(self, update: object, coroutine: Awaitable[Any]) -> None:
        key = self.chat_key(update)
        if key is None:
            async with self._slots:
                await coroutine
            return
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()  # FIFO: arrival order is kept
        self._users[key] = self._users.get(key, 0) + 1
        try:
            async with lock, self._slots:
                await coroutine
        finally:
            left = self._users[key] - 1
            if left:
                self._users[key] = left
            else:
                del self._users[key], self._locks[key]

    @property
    def busy_chats(self) -> int:
        """Chats with an update being processed or waiting (for monitoring and tests)."""
        return len(self._users)

    async def initialize(self) -> None:
        pass

    async def shutdown(self) -> None:
        pass
