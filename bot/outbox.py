"""Delivery of committed replies: per-recipient order, retries with backoff, nothing dropped."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from storage import repository as repo
from storage.db import Database

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class OutboxItem:
    id: int
    channel: str
    address: str
    payload: dict[str, Any]
    respondent_id: int | None = None


class TransientSendError(Exception):
    """Try again later (network error, 5xx, 429); retry_after in seconds when the peer said."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PermanentSendError(Exception):
    """This recipient cannot be reached (blocked the bot, address rejected): stop trying."""


Sender = Callable[[OutboxItem], Awaitable[None]]
UnreachableHook = Callable[[OutboxItem, str], Awaitable[None]]


class OutboxDispatcher:
    """Sends one channel's outbox rows after commit; rows left pending by a crash go at start.

    Replies to one recipient go strictly in order; different recipients go concurrently.
    Sent rows are marked in small batches (at-least-once: a crash between send and mark
    sends that reply again after restart, never loses it).
    """

    def __init__(self, db: Database, channel: str, send: Sender, *,
                 on_unreachable: UnreachableHook | None = None, max_attempts: int = 8,
                 base_delay: float = 0.5, max_delay: float = 300.0,
                 concurrency: int = 64) -> None:
        self.db = db
        self.channel = channel
        self.send = send
        self.on_unreachable = on_unreachable
        self.max_attempts = max_attempts
        self.base_delay = base_delay
        self.max_delay = max_delay
        self._slots = asyncio.Semaphore(concurrency)
        self._queues: dict[str, deque[OutboxItem]] = {}
        self._workers: dict[str, asyncio.Task] = {}
        self._sent: list[int] = []
        self._flush_wakeup = asyncio.Event()
        self._flusher: asyncio.Task | None = None
        self._idle = asyncio.Event()
        self._idle.set()

    async def start(self) -> None:
        self._flusher = asyncio.create_task(self._flush_loop(), name=f"outbox-{self.channel}")
        rows = await self.db.transaction(functools.partial(
            repo.pending_outbox, channel=self.channel, limit=100_000))
        if rows:
            logger.info("%s: %d replies left pending by the last run", self.channel, len(rows))
        self.enqueue([OutboxItem(r["id"], r["channel"], r["address"], r["payload"],
                                 r["respondent_id"]) for r in rows])

    def enqueue(self, items: list[OutboxItem]) -> None:
        for item in items:
            if item.channel != self.channel:
                continue
            queue = self._queues.setdefault(item.address, deque())
            queue.append(item)
            if item.address not in self._workers:
                self._idle.clear()
                self._workers[item.address] = asyncio.create_task(self._drain(item.address))

    async def wait_idle(self) -> None:
        """Until everything queued is sent and marked (tests, shutdown)."""
        await self._idle.wait()
        await self._flush()

    async def stop(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), 5.0)
        for task in list(self._workers.values()):
            task.cancel()
        if self._flusher:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        await self._flush()

    async def _drain(self, address: str) -> None:
        queue = self._queues[address]
        try:
            while queue:
                item = queue[0]
                async with self._slots:
                    delivered = await self._deliver(item)
                queue.popleft()
                if delivered is None:  # unreachable: the rest for this address fails too
                    for rest in list(queue):
                        await self._mark_failed(rest, "recipient unreachable")
                    queue.clear()
        finally:
            del self._queues[address]
            del self._workers[address]
            if not self._workers:
                self._idle.set()

    async def _deliver(self, item: OutboxItem) -> bool | None:
        for attempt in range(1, self.max_attempts + 1):
            try:
                await self.send(item)
            except PermanentSendError as exc:
                logger.warning("%s: %s unreachable: %s", self.channel, item.address, exc)
                await self._mark_failed(item, str(exc))
                if self.on_unreachable:
                    await self.on_unreachable(item, str(exc))
                return None
            except TransientSendError as exc:
                delay = exc.retry_after if exc.retry_after is not None else min(
                    self.max_delay, self.base_delay * 2 ** (attempt - 1))
                delay *= 1 if exc.retry_after is not None else random.uniform(0.8, 1.2)
                logger.info("%s: send to %s failed (%s); retry %d in %.1fs", self.channel,
                            item.address, exc, attempt, delay)
                await self.db.transaction(functools.partial(
                    repo.mark_outbox, ids=[item.id], attempts=attempt, last_error=str(exc)[:500],
                    not_before=datetime.now(UTC) + timedelta(seconds=delay)))
                await asyncio.sleep(delay)
            except Exception as exc:  # a bug in rendering: keep the row, say why
                logger.exception("%s: cannot send outbox row %d", self.channel, item.id)
                await self._mark_failed(item, f"{type(exc).__name__}: {exc}")
                return False
            else:
                self._sent.append(item.id)
                self._flush_wakeup.set()
                return True
        await self._mark_failed(item, "gave up after retries")
        return False

    async def _mark_failed(self, item: OutboxItem, error: str) -> None:
        await self.db.transaction(functools.partial(
            repo.mark_outbox, ids=[item.id], status="failed", last_error=error[:500]))

    async def _flush_loop(self) -> None:
        while True:
            await self._flush_wakeup.wait()
            self._flush_wakeup.clear()
            await asyncio.sleep(0.05)  # gather a batch of marks
            await self._flush()

    async def _flush(self) -> None:
        ids, self._sent = self._sent, []
        if ids:
            await self.db.transaction(functools.partial(
                repo.mark_outbox, ids=ids, status="sent", sent_at=datetime.now(UTC)))
