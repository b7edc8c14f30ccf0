"""Leaders for singleton jobs: one replica at a time runs each, elected by an advisory lock.

The singleton jobs of `capbot serve` are IMAP ingest (one per mailbox), Telegram long polling
and the reminder scheduler. On PostgreSQL each replica campaigns for each job: it tries a
session-level advisory lock named after the job (storage/advisory.py), on a connection of its
own, every `check` seconds. The winner starts the job and checks its connection every `check`
seconds (each check times out after `check` seconds); when a check fails it stops the job at
once and campaigns again.

Why the job can never run twice: the lock dies with the winner's session. If that session is
lost at time T, the old leader's next check fails by T + 2·check and it stops its job then.
A new winner gets the lock at T or later, and starts the job only after holding it for a
grace of 2·check + 0.5 s (checking its own connection meanwhile): after the old one stopped.
A replica killed outright loses its session at once, so takeover takes the follower's retry
(≤ check) plus the grace: about 7 s with the default check of 2 s (CAPBOT_LEADER_CHECK_SECONDS).

On SQLite (one process by design) every job is led at once, without a lock.

API:
- `await run_as_leader(database, "reminders", factory, stop=event)`: campaigns, runs
  `factory()`'s job (`await job.start()` … `await job.stop()`) while leading, returns once
  `stop` is set.
- `app.leaders.run("reminders", factory)` does the same in the background and returns a
  `Leadership` (`.leading` is an Event set while the job runs here; `await .stop()`);
  `capbot serve` closes every leadership at shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Protocol

from sqlalchemy.ext.asyncio import AsyncEngine

from storage.advisory import SessionLock, lock_engine
from storage.db import Database

logger = logging.getLogger(__name__)

DEFAULT_CHECK = 2.0  # seconds between connection checks; also each check's timeout


class Job(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...


JobFactory = Callable[[], Job]


def grace_seconds(check: float) -> float:
    """How long a new leader holds the lock before starting the job: longer than an old
    leader needs to notice that its connection is gone (a check interval plus a timeout)."""
    return 2 * check + 0.5


class Leadership:
    """One job's campaign in this replica."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.leading = asyncio.Event()  # set while the job runs in this replica
        self.terms = 0  # times this replica started the job
        self.losses = 0  # times it stopped the job because its connection was lost
        self._stop = asyncio.Event()
        self._task: asyncio.Task | None = None

    @property
    def is_leader(self) -> bool:
        return self.leading.is_set()

    async def stop(self) -> None:
        """Stop the job if it runs here, give the lock up, stop campaigning."""
        self._stop.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


class Leaders:
    """The campaigns of one replica, sharing one pool-less engine for their lock sessions."""

    def __init__(self, database: Database, *, check: float = DEFAULT_CHECK) -> None:
        self.database = database
        self.check = check
        self._engine: AsyncEngine | None = None
        self._jobs: dict[str, Leadership] = {}

    async def run(self, name: str, factory: JobFactory) -> Leadership:
        """Lead `name` whenever this replica can. On SQLite the job has started when this
        returns; on PostgreSQL the campaign runs in the background."""
        if name in self._jobs:
            raise ValueError(f"leader job {name!r} is already campaigning")
        leadership = Leadership(name)
        self._jobs[name] = leadership
        if self.database.is_sqlite:  # one process: lead at once, started on return
            job = factory()
            await job.start()
            leadership.terms = 1
            leadership.leading.set()
            leadership._task = asyncio.create_task(_until_stopped(job, leadership),
                                                   name=f"leader-{name}")
            return leadership
        if self._engine is None:
            self._engine = lock_engine(self.database.url)
        leadership._task = asyncio.create_task(
            run_as_leader(self.database, name, factory, stop=leadership._stop,
                          check=self.check, engine=self._engine, leadership=leadership),
            name=f"leader-{name}")
        return leadership

    def get(self, name: str) -> Leadership | None:
        return self._jobs.get(name)

    async def stop(self, name: str) -> None:
        leadership = self._jobs.pop(name, None)
        if leadership is not None:
            await leadership.stop()

    async def close(self) -> None:
        for name in list(self._jobs):
            await self.stop(name)
        if self._engine is not None:
            await self._engine.dispose()
            self._engine = None


async def run_as_leader(database: Database, job_name: str, job_factory: JobFactory, *,
                        stop: asyncio.Event, check: float = DEFAULT_CHECK,
                        engine: AsyncEngine | None = None,
                        leadership: Leadership | None = None) -> None:
    """Run `job_factory()`'s job while this replica leads `job_name`, until `stop` is set."""
    state = leadership or Leadership(job_name)
    if database.is_sqlite:
        await _lead_alone(job_factory, state, stop)
        return
    own_engine = engine is None
    lock = SessionLock(engine or lock_engine(database.url), job_name, timeout=check)
    unreachable = False
    try:
        while not stop.is_set():
            try:
                got = await lock.try_acquire()
            except Exception as exc:
                if not unreachable:
                    logger.warning("leader %s: cannot reach the database (%s); retrying every "
                                   "%.0f s", job_name, exc or type(exc).__name__, check)
                unreachable, got = True, False
            else:
                if unreachable:
                    logger.info("leader %s: the database answers again", job_name)
                unreachable = False
            if not got:
                await _wait(stop, check)
                continue
            # An old leader that lost its session stops within 2·check: start after that.
            if not await _hold(lock, stop, check, duration=grace_seconds(check)):
                continue
            if stop.is_set():
                break
            await _lead(lock, job_factory, state, stop, check)
    finally:
        await lock.release()
        if own_engine:
            await lock.engine.dispose()


async def _lead(lock: SessionLock, job_factory: JobFactory, state: Leadership,
                stop: asyncio.Event, check: float) -> None:
    name = state.name
    job = job_factory()
    try:
        await job.start()
    except Exception:
        logger.exception("leader %s: the job did not start; giving the lead up", name)
        await _stop_job(job, name)
        await lock.release()
        await _wait(stop, check * 5)
        return
    state.terms += 1
    state.leading.set()
    logger.info("leader %s: this replica leads (term %d)", name, state.terms)
    try:
        alive = await _hold(lock, stop, check)
    finally:
        state.leading.clear()
        await _stop_job(job, name)
    if not alive:
        state.losses += 1
        logger.warning("leader %s: lost the database connection holding the lock; job "
                       "stopped, campaigning again", name)


async def _lead_alone(job_factory: JobFactory, state: Leadership, stop: asyncio.Event) -> None:
    job = job_factory()
    await job.start()
    state.terms += 1
    state.leading.set()
    await _until_stopped(job, state, stop)


async def _until_stopped(job: Job, state: Leadership, stop: asyncio.Event | None = None
                         ) -> None:
    try:
        await (stop or state._stop).wait()
    finally:
        state.leading.clear()
        await _stop_job(job, state.name)


async def _hold(lock: SessionLock, stop: asyncio.Event, check: float, *,
                duration: float | None = None) -> bool:
    """Check the lock's session every `check` seconds until `stop` is set or `duration` has
    passed (True), or until a check fails (False: the lock is gone)."""
    loop = asyncio.get_running_loop()
    deadline = None if duration is None else loop.time() + duration
    while not stop.is_set():
        wait = check if deadline is None else min(check, deadline - loop.time())
        if wait > 0:
            await _wait(stop, wait)
        if stop.is_set():
            return True
        if not await lock.alive():
            return False
        if deadline is not None and loop.time() >= deadline:
            return True
    return True


async def _wait(event: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), seconds)


async def _stop_job(job: Job, name: str) -> None:
    try:
        await job.stop()
    except Exception:
        logger.exception("leader %s: the job did not stop cleanly", name)
