"""Leaders of singleton jobs (bot/leaders.py): at once on SQLite; on a real PostgreSQL one
replica at a time, a takeover within seconds when the leader goes, and a leader whose lock
session is cut stops its job before anyone else starts it."""

from __future__ import annotations

import asyncio
import itertools
import time
from pathlib import Path

import pytest
from sqlalchemy import text

from bot.leaders import Leaders, grace_seconds, run_as_leader
from storage.advisory import advisory_key
from storage.db import Database

CHECK = 0.3  # fast checks for the test: grace 1.1 s


class Recorder:
    """Jobs that note when they run: (replica, start, stop) intervals on one clock."""

    def __init__(self) -> None:
        self.intervals: list[list] = []  # [replica, started, stopped or None]

    def factory(self, replica: str):
        recorder = self

        class Job:
            async def start(self) -> None:
                recorder.intervals.append([replica, time.monotonic(), None])

            async def stop(self) -> None:
                for interval in recorder.intervals:
                    if interval[0] == replica and interval[2] is None:
                        interval[2] = time.monotonic()

        return Job

    def running(self) -> list[str]:
        return [r for r, _, stopped in self.intervals if stopped is None]

    def assert_never_overlapping(self) -> None:
        spans = sorted((start, stop or float("inf"), r) for r, start, stop in self.intervals)
        for (_, end, r1), (start, _, r2) in itertools.pairwise(spans):
            assert end <= start, f"{r1} still ran when {r2} started"


async def wait_until(condition, timeout: float = 10.0) -> None:  # noqa: ASYNC109
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def test_the_key_of_a_name_is_stable() -> None:
    # Replicas of different versions must agree on it: never change the derivation.
    assert advisory_key("reminders") == advisory_key("reminders")
    assert advisory_key("reminders") != advisory_key("telegram-polling")
    assert advisory_key("reminders") == -2354591818468618178
    assert -2**63 <= advisory_key("imap:bot@127.0.0.1:993/INBOX") < 2**63


async def test_sqlite_leads_at_once(tmp_path: Path) -> None:
    database = Database(f"sqlite+aiosqlite:///{tmp_path / 'capbot.db'}")
    recorder = Recorder()
    leaders = Leaders(database, check=CHECK)
    try:
        leadership = await leaders.run("reminders", recorder.factory("a"))
        assert leadership.is_leader and recorder.running() == ["a"]  # started on return
        await leaders.close()
        assert recorder.running() == [] and not leadership.is_leader
    finally:
        await database.dispose()


async def test_one_leader_and_a_takeover_when_it_stops(postgres_url: str) -> None:
    a, b = Database(postgres_url), Database(postgres_url)
    recorder = Recorder()
    leaders_a, leaders_b = Leaders(a, check=CHECK), Leaders(b, check=CHECK)
    try:
        lead_a = await leaders_a.run("reminders", recorder.factory("a"))
        await wait_until(lambda: lead_a.is_leader)
        lead_b = await leaders_b.run("reminders", recorder.factory("b"))
        await asyncio.sleep(grace_seconds(CHECK) + 3 * CHECK)
        assert recorder.running() == ["a"] and not lead_b.is_leader
        # Another job is led independently.
        other = await leaders_b.run("telegram-polling", recorder.factory("b-poll"))
        await wait_until(lambda: other.is_leader)

        gone = time.monotonic()
        await leaders_a.stop("reminders")  # a deploy stops replica a: b takes over
        await wait_until(lambda: lead_b.is_leader)
        assert time.monotonic() - gone < grace_seconds(CHECK) + 2 * CHECK + 1
        spans = [i for i in recorder.intervals if i[0] in ("a", "b")]
        assert [i[0] for i in spans] == ["a", "b"] and spans[0][2] <= spans[1][1]
    finally:
        await leaders_a.close()
        await leaders_b.close()
        await a.dispose()
        await b.dispose()


async def test_a_leader_whose_session_is_cut_stops_before_the_other_starts(
        postgres_url: str) -> None:
    """The lock dies with the session: terminate the leader's lock session on the server
    (as a failover or an idle-session kill would) and check who runs when."""
    a, b = Database(postgres_url), Database(postgres_url)
    recorder = Recorder()
    leaders_a, leaders_b = Leaders(a, check=CHECK), Leaders(b, check=CHECK)
    key = advisory_key("imap:bot@localhost:143/INBOX")
    try:
        lead_a = await leaders_a.run("imap:bot@localhost:143/INBOX", recorder.factory("a"))
        await wait_until(lambda: lead_a.is_leader)
        lead_b = await leaders_b.run("imap:bot@localhost:143/INBOX", recorder.factory("b"))
        await asyncio.sleep(2 * CHECK)
        async with a.engine.connect() as conn:
            # A bigint advisory key shows in pg_locks as classid (high half), objid (low).
            cut = (await conn.execute(text(
                "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' "
                "AND granted AND objsubid = 1 AND classid = :high AND objid = :low"),
                {"high": (key >> 32) & 0xFFFFFFFF, "low": key & 0xFFFFFFFF})).scalars().all()
        assert cut == [True]
        await wait_until(lambda: lead_b.is_leader)
        assert not lead_a.is_leader and lead_a.losses == 1
        recorder.assert_never_overlapping()
        # a campaigns again and follows.
        await asyncio.sleep(grace_seconds(CHECK) + 2 * CHECK)
        assert recorder.running() == ["b"]
    finally:
        await leaders_a.close()
        await leaders_b.close()
        await a.dispose()
        await b.dispose()


async def test_run_as_leader_returns_when_stopped(postgres_url: str) -> None:
    database = Database(postgres_url)
    recorder = Recorder()
    stop = asyncio.Event()
    try:
        task = asyncio.create_task(run_as_leader(database, "reminders", recorder.factory("a"),
                                                 stop=stop, check=CHECK))
        await wait_until(lambda: recorder.running() == ["a"])
        stop.set()
        await asyncio.wait_for(task, 5)
        assert recorder.running() == []
        async with database.engine.connect() as conn:  # the lock was given back
            held = (await conn.execute(text(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"))).scalar()
        assert held == 0
    finally:
        await database.dispose()


@pytest.mark.parametrize("check", [0.5, 2.0])
def test_the_grace_outlasts_an_old_leaders_detection(check: float) -> None:
    # An old leader notices a lost session within a check interval plus a check's timeout.
    assert grace_seconds(check) > 2 * check
