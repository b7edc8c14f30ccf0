"""Per-chat ordering of Telegram updates: different chats run concurrently, one chat's in order."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Any

from telegram import Update
from telegram.ext import BaseUpdateProcessor

from bot.locks import KeyedLocks

logger = logging.getLogger(__name__)

# PTB's own semaphore is taken before do_process_update(), so updates queued behind a busy chat
# would hold slots that other chats need. It is made wide; the real bound is applied after the
# chat's turn has come.
_OUTER_SLOTS = 1 << 20


class PerChatUpdateProcessor(BaseUpdateProcessor):
    """Processes up to `max_concurrent` updates at once, those of one chat one at a time, in
    the order they arrived (`concurrent_updates=True` alone lets a fast reply overtake a slow
    one in the same chat). The chat's lock is bot/locks.py's `KeyedLocks` (FIFO, evicted when
    idle), the same mechanism as the service's per-respondent lock.

    A chat's waiting updates do not occupy processing slots, so one chat sending a burst cannot
    starve the others. Updates without a chat (inline queries, polls) are not serialized.
    """

    def __init__(self, max_concurrent: int = 256) -> None:
        super().__init__(_OUTER_SLOTS)
        self.max_concurrent = max_concurrent
        self._slots = asyncio.Semaphore(max_concurrent)
        self._chats = KeyedLocks()

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
        async with self._chats.hold(key), self._slots:
            await coroutine

    @property
    def busy_chats(self) -> int:
        """Chats with an update being processed or waiting (for monitoring and tests)."""
        return len(self._chats)

    async def initialize(self) -> None:
        pass

    async def shutdown(self) -> None:
        pass
