"""The outbox under faults: a full disk while marking, a crash mid-send, a flooding chat."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import time

from sqlalchemy import select

from bot.outbox import OutboxDispatcher, OutboxItem, TransientSendError
from reports.stats import collect_stats, format_stats
from storage.models import outbox
from testkit.disk import small_disk


async def _statuses(app) -> dict[int, str]:
    async with app.db.connect() as conn:
        return {r.id: r.status for r in await conn.execute(select(outbox))}


async def _until(condition, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not await condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


def _items(texts: list[str], address: str = "chat-1") -> list[dict]:
    return [{"channel": "telegram", "address": address, "payload": {"text": t}} for t in texts]


async def test_a_full_disk_while_marking_loses_no_mark_and_resends_nothing(
        make_app, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="bot.outbox")
    with small_disk() as disk:
        app = await make_app(f"sqlite+aiosqlite:///{disk.path / 'capbot.db'}")
        sent: list[str] = []

        async def send(item: OutboxItem) -> None:
            sent.append(item.payload["text"])
            if item.payload["text"] == "first":
                disk.fill()  # the disk fills up between this send and its mark

        dispatcher = OutboxDispatcher(app.database, "telegram", send)
        await dispatcher.start()
        app.service.on_outbox(dispatcher.enqueue)
        await app.service.send_later(_items(["first"]))
        await _until(lambda: _async(bool(sent)), 5, "the first send")
        await asyncio.sleep(1.0)  # marks are refused for a while
        assert disk.is_full
        disk.free()
        await app.service.send_later(_items(["second", "third"]) + _items(["other"], "chat-2"))

        async def all_marked() -> bool:
            return set((await _statuses(app)).values()) == {"sent"}

        # No wait_idle() here: the marks must get written by the running dispatcher itself.
        await _until(all_marked, 15, "every sent reply to be marked")
        assert sorted(sent) == ["first", "other", "second", "third"]
        assert any("refused" in r.getMessage() for r in caplog.records
                   if r.levelno == logging.WARNING)
        await dispatcher.stop()

        restarted: list[str] = []

        async def send_again(item: OutboxItem) -> None:
            restarted.append(item.payload["text"])

        again = OutboxDispatcher(app.database, "telegram", send_again)
        await again.start()
        await asyncio.wait_for(again.wait_idle(), 5)
        await again.stop()
        assert restarted == []  # nothing goes out twice after the restart
        await app.close()


async def _async(value):
    return value


async def test_a_row_claimed_by_a_process_that_died_waits_for_its_lease(
        make_app, sqlite_url) -> None:
    app = await make_app(sqlite_url)
    first_sends: list[str] = []
    dying = asyncio.Event()

    async def send_then_die(item: OutboxItem) -> None:
        first_sends.append(item.payload["text"])
        dying.set()
        await asyncio.Event().wait()  # the process is killed before it can mark the row

    await app.service.send_later(_items(["receipt"]))  # committed; picked up at start
    doomed = OutboxDispatcher(app.database, "telegram", send_then_die, lease=2.0)
    await doomed.start()
    await asyncio.wait_for(dying.wait(), 5)
    for task in [*doomed._workers.values(), *doomed._background]:  # SIGKILL, as seen by the DB
        task.cancel()

    sent_after: list[tuple[float, str]] = []
    started = time.monotonic()

    async def send(item: OutboxItem) -> None:
        sent_after.append((time.monotonic() - started, item.payload["text"]))

    survivor = OutboxDispatcher(app.database, "telegram", send, lease=2.0)
    await app.service.send_later(_items(["to someone else"], "chat-2"))
    await survivor.start()
    await _until(lambda: _async(len(sent_after) == 2), 10, "both rows to be sent")
    await survivor.stop()
    by_text = {text: at for at, text in sent_after}
    assert first_sends == ["receipt"]
    # Never attempted: goes at once; attempted within the lease: only after it ran out.
    assert by_text["to someone else"] < by_text["receipt"]
    assert by_text["receipt"] >= 1.0
    assert set((await _statuses(app)).values()) == {"sent"}


async def test_identical_replies_waiting_for_one_chat_are_sent_once(make_app, sqlite_url
                                                                   ) -> None:
    app = await make_app(sqlite_url)
    sent: list[str] = []
    release = asyncio.Event()

    async def slow_send(item: OutboxItem) -> None:
        await release.wait()  # Telegram paces a private chat to about one message a second
        sent.append(item.payload["text"])

    dispatcher = OutboxDispatcher(app.database, "telegram", slow_send)
    await dispatcher.start()
    app.service.on_outbox(dispatcher.enqueue)
    flood = ["Please type a whole number, for example 25.", "How many people were trained?"]
    for _ in range(50):  # one chat sends the same wrong answer fifty times
        await app.service.send_later(_items(flood))
    await app.service.send_later(_items(["A different reply"]))
    release.set()
    await asyncio.wait_for(dispatcher.wait_idle(), 10)
    await dispatcher.stop()
    assert sent == [*flood, "A different reply"]
    statuses = list((await _statuses(app)).values())
    assert statuses.count("sent") == 3
    assert statuses.count("coalesced") == 98


async def test_replies_given_up_on_are_reported_and_can_be_queued_again(
        make_app, tmp_path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'capbot.db'}"
    app = await make_app(url)
    outage = True
    sent: list[str] = []

    async def send(item: OutboxItem) -> None:
        if outage:
            raise TransientSendError("SMTP server unreachable")
        sent.append(item.payload["text"])

    dispatcher = OutboxDispatcher(app.database, "email", send, max_attempts=2,
                                  base_delay=0.01, sweep_interval=0.2)
    await dispatcher.start()
    app.service.on_outbox(dispatcher.enqueue)
    await app.service.send_later([{"channel": "email", "address": "a@example.org",
                                   "payload": {"text": "your receipt"}}])
    await asyncio.wait_for(dispatcher.wait_idle(), 10)
    stats = await collect_stats(app.db, app.questionnaire, app.translations)
    assert stats["undelivered"] == [{"channel": "email", "status": "failed",
                                     "reason": "gave up after retries", "messages": 1}]
    assert "gave up after retries" in format_stats(stats)

    outage = False
    done = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "bot", "outbox", "retry"], text=True,
        capture_output=True, timeout=60, env={**os.environ, "CAPBOT_DATABASE_URL": url})
    assert done.returncode == 0 and "1 messages queued again" in done.stderr, done.stderr
    await _until(lambda: _async(sent == ["your receipt"]), 10, "the retried send")
    await dispatcher.stop()
    assert set((await _statuses(app)).values()) == {"sent"}


async def test_the_sweep_never_queues_a_reply_already_sent(make_app, sqlite_url) -> None:
    app = await make_app(sqlite_url)
    sent: list[str] = []

    async def send(item: OutboxItem) -> None:
        await asyncio.sleep(0.002)
        sent.append(item.payload["text"])

    # A sweep every few milliseconds races every send and every mark.
    dispatcher = OutboxDispatcher(app.database, "telegram", send, sweep_interval=0.003)
    await dispatcher.start()
    app.service.on_outbox(dispatcher.enqueue)
    for n in range(60):
        await app.service.send_later(_items([f"reply {n}"], f"chat-{n % 3}"))
    await asyncio.wait_for(dispatcher.wait_idle(), 20)
    await asyncio.sleep(0.1)  # a late sweep would queue a duplicate now
    await asyncio.wait_for(dispatcher.wait_idle(), 20)
    await dispatcher.stop()
    assert sorted(sent) == sorted(f"reply {n}" for n in range(60))
