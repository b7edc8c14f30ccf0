"""The outbox dispatcher: order per recipient, retries, unreachable recipients, crash recovery."""

from __future__ import annotations

import asyncio

from sqlalchemy import select

from bot.outbox import OutboxDispatcher, OutboxItem, PermanentSendError, TransientSendError
from storage.models import outbox


async def _rows(app):
    async with app.db.connect() as conn:
        return {r.id: r for r in await conn.execute(select(outbox))}


async def test_sends_in_order_retries_and_marks(make_app, database_url) -> None:
    app = await make_app(database_url)
    sent: list[tuple[str, str]] = []
    failures = {"b": 1}

    async def send(item: OutboxItem) -> None:
        if failures.get(item.address):
            failures[item.address] -= 1
            raise TransientSendError("flaky", retry_after=0.01)
        await asyncio.sleep(0.001 if item.address == "a" else 0)
        sent.append((item.address, item.payload["text"]))

    dispatcher = OutboxDispatcher(app.database, "telegram", send, base_delay=0.01)
    await dispatcher.start()
    app.service.on_outbox(dispatcher.enqueue)
    await app.service.send_later([
        {"channel": "telegram", "address": addr, "payload": {"text": f"{addr}{n}"}}
        for n in range(5) for addr in ("a", "b")])
    await asyncio.wait_for(dispatcher.wait_idle(), 10)
    assert [t for a, t in sent if a == "a"] == [f"a{n}" for n in range(5)]
    assert [t for a, t in sent if a == "b"] == [f"b{n}" for n in range(5)]
    rows = await _rows(app)
    assert {r.status for r in rows.values()} == {"sent"}
    # attempts counts committed claims: one per send, two for the retried one
    assert sorted(r.attempts for r in rows.values()) == [1] * 9 + [2]
    await dispatcher.stop()


async def test_unreachable_recipient_is_marked_and_reported(make_app, database_url) -> None:
    app = await make_app(database_url)
    reported: list[str] = []

    async def send(item: OutboxItem) -> None:
        raise PermanentSendError("Forbidden: bot was blocked by the user")

    async def unreachable(item: OutboxItem, why: str) -> None:
        reported.append(item.address)

    dispatcher = OutboxDispatcher(app.database, "telegram", send, on_unreachable=unreachable)
    await dispatcher.start()
    app.service.on_outbox(dispatcher.enqueue)
    await app.service.send_later([{"channel": "telegram", "address": "x",
                                   "payload": {"text": str(n)}} for n in range(3)])
    await asyncio.wait_for(dispatcher.wait_idle(), 10)
    rows = await _rows(app)
    assert [r.status for r in rows.values()] == ["failed"] * 3
    assert "blocked" in next(iter(rows.values())).last_error
    assert reported == ["x"]
    await dispatcher.stop()


async def test_rows_left_pending_by_a_crash_are_sent_at_start(make_app, database_url) -> None:
    app = await make_app(database_url)
    await app.service.send_later([{"channel": "email", "address": "a@example.org",
                                   "payload": {"text": "hello"}}])  # no sender running
    await app.close()
    app2 = await make_app(database_url)
    sent: list[str] = []

    async def send(item: OutboxItem) -> None:
        sent.append(item.payload["text"])

    dispatcher = OutboxDispatcher(app2.database, "email", send)
    await dispatcher.start()
    await asyncio.wait_for(dispatcher.wait_idle(), 10)
    assert sent == ["hello"]
    assert [r.status for r in (await _rows(app2)).values()] == ["sent"]
    await dispatcher.stop()
