"""One contract for the storage port, run on the embedded SQLite and on a real PostgreSQL.

The store knows nothing of the engine: these tests drive it with plain `Decision`s.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from storage import repository as repo
from storage.db import Database, upgrade
from storage.models import answers, events, inbound_messages, outbox, respondents, submissions
from storage.store import Conversation, Decision, Message, TurnStore

NOW = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)


@pytest.fixture
async def store(database_url: str):
    db = Database(database_url)
    await upgrade(db.engine)
    store = TurnStore(db, clock=lambda: NOW)
    yield store
    await store.close()
    await db.dispose()


async def _rows(store: TurnStore, table, *where) -> list:
    async with store.db.engine.connect() as conn:
        return list(await conn.execute(select(table).where(*where).order_by(table.c.id)))


def _message(user: str, n: int, channel: str = "telegram") -> Message:
    return Message(channel, user, f"{channel}:{user}:{n}", "text", f'{{"n": {n}}}', "Amina")


_refs = itertools.count()


def _start(ref: str | None = None) -> Conversation:
    return Conversation("cpb_cb_survey", "1", ref or f"CB-{next(_refs):07d}", 1, "fr")


def _answer(state_answers: dict, question: str, value, n: int = 0):
    def decide(stored):
        state = dict(stored or {"answers": {}, "lang": "fr"})
        state["answers"] = {**state["answers"], question: value}
        return Decision(state, [{"type": "answer", "question": question, "repeat": None,
                                 "value": value}], [{"type": "started"}] if n == 0 else [],
                        [{"text": f"recorded {question}"}],
                        start=None if stored else _start())
    return decide


async def test_a_first_turn_creates_respondent_submission_answers_and_outbox(store) -> None:
    record = await store.turn(_message("u1", 0), _answer({}, "R1_name", "Amina Diallo"))
    assert not record.duplicate and record.respondent_id and record.submission_id
    [resp] = await _rows(store, respondents)
    assert (resp.channel_user_id, resp.display_name, resp.language) == ("u1", "Amina", "fr")
    [sub] = await _rows(store, submissions)
    assert (sub.status, sub.version, sub.language) == ("draft", 1, "fr")
    assert sub.reference.startswith("CB-")
    [ans] = await _rows(store, answers)
    assert (ans.question_id, ans.value, ans.channel_message_id) == (
        "R1_name", "Amina Diallo", "telegram:u1:0")
    [row] = await _rows(store, outbox)
    assert (row.address, row.status, row.payload) == ("u1", "pending",
                                                      {"text": "recorded R1_name"})
    assert [o.id for o in record.outbox] == [row.id]
    [ib] = await _rows(store, inbound_messages)
    assert (ib.status, ib.payload, ib.respondent_id) == ("processed", '{"n": 0}', resp.id)
    assert [e.type for e in await _rows(store, events)] == ["started"]


async def test_a_second_delivery_of_the_same_message_is_a_duplicate(store) -> None:
    await store.turn(_message("u1", 0), _answer({}, "R1_name", "A"))
    again = await store.turn(_message("u1", 0), _answer({}, "R1_name", "B"))
    assert again.duplicate and again.outbox == []
    [ans] = await _rows(store, answers)
    assert ans.value == "A"


async def test_the_stored_state_is_handed_to_decide(store) -> None:
    seen = []

    def spy(stored):
        seen.append(stored)
        return _answer({}, "R3_org", "Ministry")(stored)

    await store.turn(_message("u1", 0), _answer({}, "R1_name", "A"))
    await store.turn(_message("u1", 1), spy)
    assert seen[0]["answers"] == {"R1_name": "A"}
    assert {a.question_id for a in await _rows(store, answers)} == {"R1_name", "R3_org"}


async def test_submit_then_amend_keeps_the_submitted_version(store) -> None:
    await store.turn(_message("u1", 0), _answer({}, "R1_name", "A"))

    def submit(stored):
        return Decision(stored, [{"type": "submitted"}], [{"type": "submitted"}])

    def amend(stored):
        state = {**stored, "answers": {**stored["answers"], "R1_name": "B"}}
        return Decision(state, [
            {"type": "amend", "conversation": Conversation("cpb_cb_survey", "1", reference, 2,
                                                           "fr"),
             "answers": [("R1_name", 0, "A")]},
            {"type": "answer", "question": "R1_name", "repeat": None, "value": "B"}],
            [{"type": "amend"}])

    await store.turn(_message("u1", 1), submit)
    [first] = await _rows(store, submissions)
    reference = first.reference
    await store.turn(_message("u1", 2), amend)
    subs = await _rows(store, submissions)
    assert [(s.version, s.status) for s in subs] == [(1, "submitted"), (2, "draft")]
    assert subs[1].supersedes_id == subs[0].id and subs[0].submitted_at is not None
    values = {(a.submission_id, a.question_id): a.value for a in await _rows(store, answers)}
    assert values == {(subs[0].id, "R1_name"): "A", (subs[1].id, "R1_name"): "B"}


async def test_a_failed_decision_keeps_the_message_and_changes_nothing(store) -> None:
    await store.turn(_message("u1", 0), _answer({}, "R1_name", "A"))
    failed = await store.turn(_message("u1", 1), lambda stored: Decision(
        None, replies=[{"text": "sorry"}], error="RuntimeError: boom"))
    assert [o.payload for o in failed.outbox] == [{"text": "sorry"}]
    last = (await _rows(store, inbound_messages))[-1]
    assert (last.status, last.reason) == ("failed", "RuntimeError: boom")
    [ans] = await _rows(store, answers)
    assert ans.value == "A"


async def test_concurrent_turns_of_many_respondents_commit_in_groups(store) -> None:
    records = await asyncio.gather(*(
        store.turn(_message(f"u{i}", 0), _answer({}, "R1_name", f"name {i}"))
        for i in range(40)))
    assert len({r.respondent_id for r in records}) == 40
    assert len(await _rows(store, answers)) == 40


async def test_a_turn_the_database_refuses_raises_and_the_batch_survives(store) -> None:
    def bad(stored):  # a value the JSON column cannot take
        return Decision({"answers": {}, "bad": object()}, start=_start())

    results = await asyncio.gather(
        store.turn(_message("bad", 0), bad),
        *(store.turn(_message(f"ok{i}", 0), _answer({}, "R1_name", "x")) for i in range(5)),
        return_exceptions=True)
    assert isinstance(results[0], Exception)
    assert all(not isinstance(r, Exception) for r in results[1:])
    assert len(await _rows(store, answers)) == 5


async def test_unprocessed_messages_are_kept_once(store) -> None:
    message = Message("email", "a@example.org", "<m1@example.org>", "text", "raw bytes")
    assert await store.record_unprocessed(message, status="ignored", reason="auto-reply")
    assert not await store.record_unprocessed(message, status="ignored", reason="auto-reply")
    [row] = await _rows(store, inbound_messages)
    assert (row.status, row.reason, row.payload) == ("ignored", "auto-reply", "raw bytes")


async def test_outbox_claims_leases_and_marks(store) -> None:
    [row] = await store.add_outbox([{"channel": "email", "address": "a@example.org",
                                     "payload": {"text": "hi"}}])
    def claim(owner: str):
        return functools.partial(repo.claim_outbox, row_id=row.id, owner=owner, now=NOW,
                                 until=NOW + timedelta(seconds=60))

    assert await store.db.transaction(claim("one")) == (True, None)
    taken, until = await store.db.transaction(claim("two"))
    assert not taken and until == NOW + timedelta(seconds=60)
    later = functools.partial(repo.claim_outbox, row_id=row.id, owner="two",
                              now=NOW + timedelta(seconds=61), until=NOW + timedelta(seconds=99))
    assert await store.db.transaction(later) == (True, None)  # the lease ran out
    await store.db.transaction(functools.partial(repo.mark_outbox_rows,
                                                 marks=[(row.id, "sent", None)], now=NOW))
    assert await store.db.transaction(claim("one")) == (False, None)
    [stored] = await _rows(store, outbox)
    assert (stored.status, stored.attempts, stored.lease_until) == ("sent", 2, None)


async def test_an_address_bound_to_a_respondent_continues_its_draft(store) -> None:
    first = await store.turn(_message("a@example.org", 0, "email"),
                             _answer({}, "R1_name", "Amina Diallo"))
    binding = await store.bind_address("telegram", "777", first.respondent_id)
    assert binding.bound and binding.previous_owner is None
    second = await store.turn(_message("777", 1), _answer({}, "R2_role", "focal point", 1))
    assert (second.respondent_id, second.submission_id) == (first.respondent_id,
                                                            first.submission_id)
    rows = await _rows(store, answers)
    assert [(a.question_id, a.channel) for a in rows] == [("R1_name", "email"),
                                                         ("R2_role", "telegram")]
    [resp] = await _rows(store, respondents)
    assert resp.state["answers"] == {"R1_name": "Amina Diallo", "R2_role": "focal point"}
    assert resp.last_channel == "telegram"
    # the replies go back where each message came from
    assert [r.address for r in await _rows(store, outbox)] == ["a@example.org", "777"]


async def test_a_respondent_keeps_its_one_address_per_channel(store) -> None:
    owner = await store.turn(_message("a@example.org", 0, "email"),
                             _answer({}, "R1_name", "Amina"))
    assert (await store.bind_address("telegram", "777", owner.respondent_id)).bound
    refused = await store.bind_address("telegram", "888", owner.respondent_id)
    assert (refused.bound, refused.other_address) == (False, "777")
    again = await store.bind_address("telegram", "777", owner.respondent_id)
    assert again.bound


async def test_one_person_on_two_channels_in_one_batch_loses_no_answer(store) -> None:
    first = await store.turn(_message("a@example.org", 0, "email"),
                             _answer({}, "R1_name", "Amina"))
    await store.bind_address("telegram", "777", first.respondent_id)
    await asyncio.gather(
        store.turn(_message("a@example.org", 1, "email"), _answer({}, "R2_role", "x", 1)),
        store.turn(_message("777", 2), _answer({}, "R3_org", "y", 2)))
    [resp] = await _rows(store, respondents)
    assert set(resp.state["answers"]) == {"R1_name", "R2_role", "R3_org"}
    assert len(await _rows(store, answers)) == 3
