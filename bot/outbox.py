"""Delivery of committed replies: per-recipient order, retries with backoff, nothing dropped.

Each send is preceded by a committed claim (a lease on the row): a restarted process, or
another replica, does not send a claimed row again until the lease has run out. The only
duplicate a crash can cause is a row sent but not yet marked when the process died (at most
the sends in flight at that moment, usually one). Marks that the database refuses (disk full,
"database is locked", a failover) are kept and written again with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import random
import secrets
import socket
from collections import deque
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from storage import repository as repo
from storage.db import Database
from storage.store import OutboxRow

logger = logging.getLogger(__name__)
LEASE_POLL = 2.0  # seconds: how often to ask about a row another holder has leased


# A committed outbox row: id, channel, address, payload, respondent_id.
OutboxItem = OutboxRow


class TransientSendError(Exception):
    """Try again later (network error, 5xx, 429); retry_after in seconds when the peer said."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PermanentSendError(Exception):
    """This recipient cannot be reached (blocked the bot, address rejected): stop trying."""


Sender = Callable[[OutboxItem], Awaitable[None]]
UnreachableHook = Callable[[OutboxItem, str], Awaitable[None]]


def process_identity() -> str:
    """Who holds a lease: host, pid and a random part (a restarted pid is someone else)."""
    return f"{socket.gethostname()[:32]}:{os.getpid()}:{secrets.token_hex(3)}"


class OutboxDispatcher:
    """Sends one channel's outbox rows after commit; rows left pending by a crash go at start.

    Replies to one recipient go strictly in order; different recipients go concurrently.
    A turn's replies identical to the ones still waiting for the same recipient are not
    queued twice (a flooding chat gets one answer, not five hundred).
    """

    def __init__(self, db: Database, channel: str, send: Sender, *,
                 on_unreachable: UnreachableHook | None = None, max_attempts: int = 8,
                 base_delay: float = 0.5, max_delay: float = 300.0,
                 concurrency: int = 64, lease: float = 60.0, sweep_interval: float = 30.0,
                 owner: str | None = None) -> None:
        self.db = db
        self.channel = channel
        self.send = send
        self.on_unreachable = on_unreachable
        self.max_attempts = max_attempts
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.lease = lease
        self.sweep_interval = sweep_interval
        self.owner = owner or process_identity()
        self._slots = asyncio.Semaphore(concurrency)
        self._queues: dict[str, deque[OutboxItem]] = {}
        self._workers: dict[str, asyncio.Task] = {}
        self._queued: set[int] = set()
        # Marks not yet written: (row id, status, error). Kept until the database takes them.
        self._marks: list[tuple[int, str, str | None]] = []
        self._unflushed: set[int] = set()  # ids in _marks: settled here, still pending there
        self._flush_wakeup = asyncio.Event()
        self._flushed = asyncio.Event()
        self._flushed.set()
        self._background: list[asyncio.Task] = []
        self._claims: dict[int, asyncio.Future] = {}
        self._claim_wakeup = asyncio.Event()
        self._claimer: asyncio.Task | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self._db_trouble: str | None = None  # what the database last refused, until it works

    async def start(self) -> None:
        self._background = [
            asyncio.create_task(self._flush_loop(), name=f"outbox-marks-{self.channel}"),
            asyncio.create_task(self._sweep_loop(), name=f"outbox-sweep-{self.channel}")]
        found = await self._sweep()
        if found:
            logger.info("%s: %d replies left pending by the last run", self.channel, found)

    def enqueue(self, items: list[OutboxItem]) -> None:
        """Queue one turn's replies (or other messages committed together)."""
        by_address: dict[str, list[OutboxItem]] = {}
        for item in items:
            if item.channel == self.channel and item.id not in self._queued:
                by_address.setdefault(item.address, []).append(item)
        for address, group in by_address.items():
            queue = self._queues.setdefault(address, deque())
            if _repeats_tail(queue, group):
                for item in group:  # the recipient is about to read exactly this already
                    self._mark(item.id, "coalesced", None)
                continue
            queue.extend(group)
            self._queued.update(item.id for item in group)
            if address not in self._workers:
                self._idle.clear()
                self._workers[address] = asyncio.create_task(self._drain(address))

    async def wait_idle(self) -> None:
        """Until everything queued is sent and marked (tests, shutdown)."""
        await self._idle.wait()
        await self._wait_flushed()

    async def stop(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), 5.0)
        tasks = [*self._workers.values(), *self._background,
                 *([self._claimer] if self._claimer else [])]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        try:
            await self._flush()
        except Exception as exc:  # the leases make the next start wait instead of resending
            logger.error("%s: %d sent replies could not be marked at shutdown (%s)",
                         self.channel, len(self._marks), exc)

    # -- sending ----------------------------------------------------------------------------

    async def _drain(self, address: str) -> None:
        queue = self._queues[address]
        try:
            while queue:
                item = queue[0]
                async with self._slots:
                    delivered = await self._deliver(item)
                queue.popleft()
                self._queued.discard(item.id)
                if delivered is None:  # unreachable: the rest for this address fails too
                    for rest in list(queue):
                        self._mark(rest.id, "failed", "recipient unreachable")
                        self._queued.discard(rest.id)
                    queue.clear()
        finally:
            del self._queues[address]
            del self._workers[address]
            if not self._workers:
                self._idle.set()

    async def _deliver(self, item: OutboxItem) -> bool | None:
        """True sent, False given up, None recipient unreachable; skipped rows count as sent."""
        for attempt in range(1, self.max_attempts + 1):
            if not await self._claim(item):
                return True  # sent or given up elsewhere
            try:
                await self.send(item)
            except PermanentSendError as exc:
                logger.warning("%s: %s unreachable: %s", self.channel, item.address, exc)
                self._mark(item.id, "failed", str(exc))
                if self.on_unreachable:
                    try:
                        await self.on_unreachable(item, str(exc))
                    except Exception:
                        logger.exception("%s: cannot record %s as unreachable", self.channel,
                                         item.address)
                return None
            except TransientSendError as exc:
                delay = exc.retry_after if exc.retry_after is not None else min(
                    self.max_delay, self.base_delay * 2 ** (attempt - 1))
                delay *= 1 if exc.retry_after is not None else random.uniform(0.8, 1.2)
                logger.info("%s: send to %s failed (%s); retry %d in %.1fs", self.channel,
                            item.address, exc, attempt, delay)
                await self._note_retry(item, exc, delay)
                await asyncio.sleep(delay)
            except Exception as exc:  # a bug in rendering: keep the row, say why
                logger.exception("%s: cannot send outbox row %d", self.channel, item.id)
                self._mark(item.id, "failed", f"{type(exc).__name__}: {exc}")
                return False
            else:
                self._mark(item.id, "sent", None)
                return True
        self._mark(item.id, "failed", "gave up after retries")
        return False

    async def _claim(self, item: OutboxItem) -> bool:
        """Commit the attempt before sending; False when the row is no longer ours to send.

        Waits while another holder's lease runs (a process that died mid-send) and while the
        database refuses writes: sending without a committed claim could send twice.
        """
        delay = 0.1
        told = False
        while True:
            now = datetime.now(UTC)
            try:
                claimed, holder = await self._claim_together(item.id)
            except Exception as exc:
                self._database_refused("claim a reply before sending", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
                continue
            self._database_works()
            if claimed:
                return True
            if holder is None:  # already sent, failed or coalesced
                return False
            wait = (holder - now).total_seconds()
            if not told and wait > 1:
                logger.info("%s: row %d is leased for %.0fs more; waiting", self.channel,
                            item.id, wait)
                told = True
            # Another replica may be sending it right now: ask again every few seconds
            # whether it was marked sent, rather than sleeping out the whole lease.
            await asyncio.sleep(min(max(0.05, wait), LEASE_POLL))

    async def _claim_together(self, row_id: int) -> tuple[bool, datetime | None]:
        """One commit claims the rows of every sender that asks at about the same moment."""
        future = asyncio.get_running_loop().create_future()
        self._claims[row_id] = future
        if self._claimer is None or self._claimer.done():
            self._claimer = asyncio.create_task(self._claim_loop(),
                                                name=f"outbox-claims-{self.channel}")
        self._claim_wakeup.set()
        return await future

    async def _claim_loop(self) -> None:
        while True:
            await self._claim_wakeup.wait()
            self._claim_wakeup.clear()
            await asyncio.sleep(0)  # senders woken in this tick add their rows
            batch, self._claims = self._claims, {}
            if not batch:
                continue
            now = datetime.now(UTC)
            try:
                results = await self.db.transaction(functools.partial(
                    repo.claim_outbox_rows, row_ids=list(batch), owner=self.owner, now=now,
                    until=now + timedelta(seconds=self.lease)))
            except Exception as exc:
                for future in batch.values():
                    if not future.done():
                        future.set_exception(exc)
                continue
            for row_id, future in batch.items():
                if not future.done():
                    future.set_result(results[row_id])

    async def _note_retry(self, item: OutboxItem, exc: Exception, delay: float) -> None:
        try:
            # Not delivered, so nothing to protect: release the lease (a restart need not wait).
            await self.db.transaction(functools.partial(
                repo.mark_outbox, ids=[item.id], last_error=str(exc)[:500], lease_until=None,
                not_before=datetime.now(UTC) + timedelta(seconds=delay)))
        except Exception as db_exc:  # only bookkeeping: the retry goes ahead
            self._database_refused("note a retry", db_exc)

    # -- marks --------------------------------------------------------------------------------

    def _mark(self, row_id: int, status: str, error: str | None) -> None:
        self._marks.append((row_id, status, error[:500] if error else None))
        self._unflushed.add(row_id)
        self._flushed.clear()
        self._flush_wakeup.set()

    async def _wait_flushed(self) -> None:
        while self._marks:
            self._flush_wakeup.set()
            await self._flushed.wait()

    async def _flush_loop(self) -> None:
        delay = 0.1
        while True:
            await self._flush_wakeup.wait()
            self._flush_wakeup.clear()
            await asyncio.sleep(0.01)  # gather the marks of concurrent sends into one commit
            try:
                await self._flush()
            except Exception as exc:
                self._database_refused(f"mark {len(self._marks)} replies as sent", exc)
                self._flush_wakeup.set()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
                continue
            self._database_works()
            delay = 0.1
            if not self._marks:
                self._flushed.set()

    async def _flush(self) -> None:
        """Write the marks taken so far; on failure they stay for the next try."""
        marks = self._marks[:]
        if not marks:
            return
        await self.db.transaction(functools.partial(repo.mark_outbox_rows, marks=marks,
                                                    now=datetime.now(UTC)))
        del self._marks[:len(marks)]
        self._unflushed.difference_update(row_id for row_id, _, _ in marks)

    # -- rows nobody queued: left by a crash, or failed to reach the queue ----------------------

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(self.sweep_interval)
            try:
                found = await self._sweep(recent_too=False)
            except Exception as exc:
                self._database_refused("look for pending replies", exc)
                continue
            if found:
                logger.info("%s: %d pending replies picked up", self.channel, found)

    async def _sweep(self, *, recent_too: bool = True) -> int:
        # At start every pending row (left by a crash; claims settle races with replicas
        # running). Later, on PostgreSQL, only rows older than a lease: younger ones are most
        # likely in the queue of the replica that committed them, and taking them here would
        # race it for nothing (no double send either way: the claim decides) and could send
        # a chat's second reply before the other replica's first.
        before = None if recent_too or self.db.is_sqlite else \
            datetime.now(UTC) - timedelta(seconds=self.lease)
        rows = await self.db.transaction(functools.partial(
            repo.pending_outbox, channel=self.channel, limit=100_000, created_before=before))
        # Rows queued, or sent and not yet marked, are ours already. A row sent and marked
        # after this read is refused by its claim, so it cannot go out twice.
        fresh = [r for r in rows if r["id"] not in self._queued
                 and r["id"] not in self._unflushed]
        # One turn's replies share address and creation time: queue them as one group.
        groups: dict[tuple[str, Any], list[OutboxItem]] = {}
        for r in fresh:
            groups.setdefault((r["address"], r["created_at"]), []).append(OutboxItem(
                r["id"], r["channel"], r["address"], r["payload"], r["respondent_id"]))
        for group in groups.values():
            self.enqueue(group)
        return len(fresh)

    def _database_refused(self, what: str, exc: Exception) -> None:
        if self._db_trouble is None:
            logger.warning("%s outbox: the database refused to %s (%s); retrying with backoff",
                           self.channel, what, exc)
        self._db_trouble = what

    def _database_works(self) -> None:
        if self._db_trouble is not None:
            logger.warning("%s outbox: the database accepts writes again", self.channel)
            self._db_trouble = None


def _repeats_tail(queue: deque[OutboxItem], group: list[OutboxItem]) -> bool:
    """True when the last len(group) queued messages carry exactly these payloads."""
    if len(queue) < len(group):
        return False
    tail = list(queue)[len(queue) - len(group):]
    return all(a.payload == b.payload for a, b in zip(tail, group, strict=True))
