"""The service on SQLite and PostgreSQL: one transaction per turn, nothing lost, nothing twice."""

from __future__ import annotations

import asyncio
import itertools

from sqlalchemy import func, select

from bot.messages import Inbound
from storage.models import answers, events, inbound_messages, outbox, submissions
from testkit.conversation import FULL_RUN_EN

_ids = itertools.count()


def msg(user: str, kind: str = "text", value: str = "", channel: str = "console") -> Inbound:
    n = next(_ids)
    if kind == "choice":
        return Inbound(channel, user, f"m{n}", kind="choice", choice=value, raw=value)
    return Inbound(channel, user, f"m{n}", kind=kind, text=value, raw=value)  # type: ignore


async def complete(app, user: str, channel: str = "console"):
    await app.service.handle(msg(user, "start", "/start", channel), language="en",
                             explicit_language=True)
    result = None
    for kind, value in FULL_RUN_EN:
        result = await app.service.handle(msg(user, kind, value, channel))
        assert not result.failed
    return result


async def scalar(app, stmt):
    async with app.db.connect() as conn:
        return (await conn.execute(stmt)).scalar()


async def test_full_run_is_stored(make_app, database_url) -> None:
    app = await make_app(database_url)
    result = await complete(app, "amina")
    assert result.awaiting == "done"
    sid = result.submission_id
    async with app.db.connect() as conn:
        sub = (await conn.execute(select(submissions).where(submissions.c.id == sid))).one()
        rows = {(r.question_id, r.repeat_index): r for r in
                await conn.execute(select(answers).where(answers.c.submission_id == sid))}
    assert sub.status == "submitted" and sub.submitted_at is not None
    assert sub.reference.startswith("CB-") and sub.language == "en"
    state_answers = result.state["answers"]
    assert len(rows) == len(state_answers)
    assert rows[("R1_name", 0)].value == "Maria Lopez"
    assert rows[("A3_role", 0)].value == ["IMPLEMENTING", "COLLABORATING"]
    assert rows[("A3_role", 0)].value_code == "IMPLEMENTING;COLLABORATING"
    assert rows[("A14_budget", 0)].value == {"amount": "15000", "currency": "USD"}
    assert rows[("A11_audience", 0)].value is None  # skipped, and recorded as such
    assert await scalar(app, select(func.count()).select_from(inbound_messages)) == \
        len(FULL_RUN_EN) + 1
    assert await scalar(app, select(func.count()).select_from(events).where(
        events.c.type == "submitted")) == 1


async def test_duplicate_delivery_is_processed_once(make_app, database_url) -> None:
    app = await make_app(database_url)
    await app.service.handle(msg("u", "start", "/start"), language="en", explicit_language=True)
    inbound = msg("u", "text", "Amina")
    first = await app.service.handle(inbound)
    again = await app.service.handle(inbound)
    assert not first.duplicate and again.duplicate and not again.replies
    assert await scalar(app, select(func.count()).select_from(answers)) == 1


async def test_restart_resumes_where_the_respondent_left(make_app, database_url) -> None:
    app = await make_app(database_url)
    await app.service.handle(msg("u", "start", "/start"), language="fr", explicit_language=True)
    await app.service.handle(msg("u", "text", "Amina"))
    await app.close()
    app2 = await make_app(database_url)
    result = await app2.service.handle(msg("u", "start", "/start"))
    assert result.awaiting == "R2_email"
    assert result.replies[-1].language == "fr"


async def test_amendment_keeps_the_submitted_version(make_app, database_url) -> None:
    app = await make_app(database_url)
    first = await complete(app, "u")
    result = await app.service.handle(msg("u", "choice", "AMEND"))
    assert result.awaiting == "review" and result.submission_id != first.submission_id
    await app.service.handle(msg("u", "text", "edit 1"))
    await app.service.handle(msg("u", "text", "Maria L."))
    final = await app.service.handle(msg("u", "choice", "SUBMIT"))
    async with app.db.connect() as conn:
        subs = (await conn.execute(select(submissions).order_by(submissions.c.version))).all()
        names = dict((await conn.execute(select(answers.c.submission_id, answers.c.value).where(
            answers.c.question_id == "R1_name"))).all())
    assert [(s.version, s.status) for s in subs] == [(1, "submitted"), (2, "submitted")]
    assert subs[0].reference == subs[1].reference and subs[1].supersedes_id == subs[0].id
    assert names == {first.submission_id: "Maria Lopez", final.submission_id: "Maria L."}


async def test_engine_failure_keeps_the_message_and_answers_politely(make_app,
                                                                     database_url) -> None:
    app = await make_app(database_url)

    engine = app.service.engine_for(None)
    handle = engine.handle

    def broken(state, inbound, now, detection):
        raise RuntimeError("boom")

    engine.handle = broken  # a bug in the engine, for one turn
    try:
        result = await app.service.handle(msg("u", "text", "hello"))
    finally:
        engine.handle = handle
    assert result.failed and result.replies[0].kind == "error"
    async with app.db.connect() as conn:
        row = (await conn.execute(select(inbound_messages))).one()
    assert row.status == "failed" and "boom" in row.reason and row.payload == "hello"
    ok = await app.service.handle(msg("u", "start", "/start"))  # still usable
    assert not ok.failed and ok.awaiting in ("language", "R1_name")


async def test_outbox_rows_for_sent_channels_wait_for_the_sender(make_app,
                                                                 database_url) -> None:
    app = await make_app(database_url)
    woken: list[list[int]] = []
    app.service.on_outbox(lambda items: woken.append([i.id for i in items]))
    result = await app.service.handle(msg("42", "start", "/start", channel="telegram"),
                                      language="en", explicit_language=True)
    assert woken == [result.outbox_ids] and result.outbox_ids
    assert await scalar(app, select(func.count()).select_from(outbox).where(
        outbox.c.status == "pending")) == len(result.replies)
    shown = await app.service.handle(msg("c", "start", "/start"), language="en",
                                     explicit_language=True, delivered=True)
    assert woken == [result.outbox_ids]  # the console shows its replies itself
    assert await scalar(app, select(func.count()).select_from(outbox).where(
        outbox.c.status == "sent")) == len(shown.replies)
    assert await scalar(app, select(func.count()).select_from(outbox).where(
        outbox.c.status == "pending")) == len(result.replies)


async def test_concurrent_respondents_each_complete_in_order(make_app, database_url) -> None:
    app = await make_app(database_url)
    results = await asyncio.gather(*(complete(app, f"r{i}") for i in range(12)))
    assert {r.awaiting for r in results} == {"done"}
    assert await scalar(app, select(func.count()).select_from(submissions).where(
        submissions.c.status == "submitted")) == 12
    refs = await scalar(app, select(func.count(func.distinct(submissions.c.reference))))
    assert refs == 12


async def test_replies_carry_what_the_turn_did_and_the_reply_path(make_app,
                                                                   database_url) -> None:
    """Written with the reply, so any process sends it the same way (issue 9 items 5-6)."""
    app = await make_app(database_url)
    assert await app.service.language_of("chat", "d") is None
    await app.service.handle(msg("d", "start", "/start", "chat"), language="fr",
                             explicit_language=True)
    assert await app.service.language_of("chat", "d") == "fr"
    answer = Inbound("chat", "d", "m-name", text="Maria Lopez", raw="Maria Lopez",
                     reply_path={"pressed": {"message_id": 7}})
    result = await app.service.handle(answer)
    async with app.db.connect() as conn:
        payloads = [r.payload for r in await conn.execute(
            select(outbox.c.payload).where(outbox.c.id.in_(result.outbox_ids))
            .order_by(outbox.c.id))]
    assert payloads and all(p["pressed"] == {"message_id": 7} for p in payloads)
    assert [p["turn"]["first"] for p in payloads] == [True] + [False] * (len(payloads) - 1)
    turn = payloads[0]["turn"]
    assert turn["answered"] == {"R1_name": "Maria Lopez"} and not turn["stale"]
    assert turn["awaiting"] == result.state["slot"] != "R1_name"
