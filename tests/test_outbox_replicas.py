"""The outbox drained by two replicas at once on a real PostgreSQL: every reply sent exactly
once and in order per recipient, whoever wins each claim (FOR UPDATE SKIP LOCKED + leases)."""

from __future__ import annotations

import asyncio
import functools
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

import bot.outbox
from bot.outbox import OutboxDispatcher, OutboxItem
from storage import repository as repo
from storage.db import Database, upgrade
from storage.models import outbox
from storage.store import TurnStore

ADDRESSES, PER_ADDRESS = 20, 15


async def test_two_replicas_drain_one_outbox_without_double_sends(
        postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bot.outbox, "LEASE_POLL", 0.05)
    a, b = Database(postgres_url), Database(postgres_url)
    await upgrade(a.engine)
    sent: list[tuple[str, str, str]] = []  # (replica, address, text)

    def sender(replica: str):
        async def send(item: OutboxItem) -> None:
            await asyncio.sleep(0.003)  # a Bot API call
            sent.append((replica, item.address, item.payload["text"]))
        return send

    # Rows left pending (a replica died with a backlog): both survivors' start-up sweeps
    # find all of them and race for every row.
    store = TurnStore(a, clock=lambda: datetime.now(UTC))
    await store.add_outbox([
        {"channel": "telegram", "address": f"chat-{n % ADDRESSES}",
         "payload": {"text": f"reply {n // ADDRESSES}"}}
        for n in range(ADDRESSES * PER_ADDRESS)])
    dispatchers = [OutboxDispatcher(db, "telegram", sender(name), lease=30.0)
                   for name, db in (("a", a), ("b", b))]
    try:
        await asyncio.gather(*(d.start() for d in dispatchers))
        await asyncio.wait_for(asyncio.gather(*(d.wait_idle() for d in dispatchers)), 60)
    finally:
        for d in dispatchers:
            await d.stop()
        await store.close()
    async with a.engine.connect() as conn:
        statuses = Counter((await conn.execute(select(outbox.c.status))).scalars())
    await a.dispose()
    await b.dispose()

    assert statuses == {"sent": ADDRESSES * PER_ADDRESS}
    counts = Counter((address, text) for _, address, text in sent)
    assert set(counts.values()) == {1}, [k for k, v in counts.items() if v > 1][:5]
    assert len(counts) == ADDRESSES * PER_ADDRESS
    for address in {address for _, address, _ in sent}:  # in order per recipient
        texts = [text for _, to, text in sent if to == address]
        assert texts == [f"reply {n}" for n in range(PER_ADDRESS)]


async def test_a_row_being_claimed_elsewhere_is_skipped_not_waited_for(
        postgres_url: str) -> None:
    a, b = Database(postgres_url), Database(postgres_url)
    await upgrade(a.engine)
    store = TurnStore(a, clock=lambda: datetime.now(UTC))
    rows = await store.add_outbox([{"channel": "telegram", "address": "chat-1",
                                    "payload": {"text": "hello"}}])
    row_id = rows[0].id
    now = datetime.now(UTC)
    until = now + timedelta(seconds=60)
    try:
        async with a.engine.begin() as conn:  # replica a's claim, not committed yet
            first = await conn.run_sync(functools.partial(
                repo.claim_outbox_rows, row_ids=[row_id], owner="a", now=now, until=until))
            assert first == {row_id: (True, None)}
            # b's claim returns at once: the row is locked, ask again shortly.
            second = await asyncio.wait_for(b.transaction(functools.partial(
                repo.claim_outbox_rows, row_ids=[row_id], owner="b", now=now, until=until)),
                5)
            assert second[row_id][0] is False
            assert second[row_id][1] == now + repo.CLAIM_BUSY
        # Committed: b now sees a's lease and waits for it.
        third = await b.transaction(functools.partial(
            repo.claim_outbox_rows, row_ids=[row_id], owner="b", now=now, until=until))
        assert third[row_id][0] is False and third[row_id][1] == until
        await a.transaction(functools.partial(
            repo.mark_outbox_rows, marks=[(row_id, "sent", None)], now=now))
        fourth = await b.transaction(functools.partial(
            repo.claim_outbox_rows, row_ids=[row_id], owner="b", now=now, until=until))
        assert fourth == {row_id: (False, None)}  # sent: not b's to send
    finally:
        await store.close()
        await a.dispose()
        await b.dispose()
