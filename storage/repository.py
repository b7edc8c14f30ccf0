"""Core SQL for the hot path: one function per statement the service needs, no ORM overhead."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import and_, delete, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from storage.models import answers, events, inbound_messages, outbox, respondents, submissions


def _insert_ignore(conn: AsyncConnection, table, conflict_cols: Sequence[str]):
    dialect = sqlite if conn.dialect.name == "sqlite" else postgresql
    return dialect.insert(table).on_conflict_do_nothing(index_elements=list(conflict_cols))


def flat_value(value: Any) -> str | None:
    """The export/search form of an answer: codes ';'-joined, money as 'amount currency'."""
    if value is None:
        return None
    if isinstance(value, list):
        return ";".join(str(v) for v in value)
    if isinstance(value, dict):
        return f"{value.get('amount', '')} {value.get('currency', '')}".strip()
    return str(value)


async def insert_inbound(conn: AsyncConnection, *, channel: str, message_id: str,
                         user_id: str | None, kind: str, payload: str, status: str,
                         reason: str | None, now: datetime) -> int | None:
    """Record an inbound message; None when this channel id was seen before (a duplicate)."""
    stmt = _insert_ignore(conn, inbound_messages, ["channel", "channel_message_id"]).values(
        channel=channel, channel_message_id=message_id, channel_user_id=user_id, kind=kind,
        payload=payload, status=status, reason=reason, received_at=now,
    ).returning(inbound_messages.c.id)
    return (await conn.execute(stmt)).scalar()


async def set_inbound_outcome(conn: AsyncConnection, inbound_id: int, *, status: str,
                              reason: str | None, respondent_id: int | None) -> None:
    await conn.execute(update(inbound_messages).where(inbound_messages.c.id == inbound_id)
                       .values(status=status, reason=reason, respondent_id=respondent_id))


async def load_respondent(conn: AsyncConnection, channel: str, user_id: str, *,
                          lock: bool) -> Any:
    stmt = select(respondents.c.id, respondents.c.state, respondents.c.submission_id,
                  respondents.c.language).where(
        and_(respondents.c.channel == channel, respondents.c.channel_user_id == user_id))
    if lock and conn.dialect.name == "postgresql":
        stmt = stmt.with_for_update()  # several replicas: one turn per respondent at a time
    return (await conn.execute(stmt)).first()


async def create_respondent(conn: AsyncConnection, *, channel: str, user_id: str,
                            display_name: str | None, state: dict, now: datetime) -> int:
    stmt = insert(respondents).values(
        channel=channel, channel_user_id=user_id, display_name=display_name, state=state,
        language=state.get("lang"), unreachable=False, created_at=now, updated_at=now,
    ).returning(respondents.c.id)
    return (await conn.execute(stmt)).scalar_one()


async def create_submission(conn: AsyncConnection, *, respondent_id: int, state: dict,
                            channel: str, now: datetime, supersedes_id: int | None = None) -> int:
    stmt = insert(submissions).values(
        respondent_id=respondent_id, questionnaire_id=state["questionnaire"],
        questionnaire_version=state["qversion"], reference=state["ref"],
        version=state["version"], supersedes_id=supersedes_id, status="draft",
        language=state.get("lang"), channel=channel, started_at=now, updated_at=now,
    ).returning(submissions.c.id)
    return (await conn.execute(stmt)).scalar_one()


async def save_state(conn: AsyncConnection, respondent_id: int, state: dict,
                     submission_id: int, now: datetime) -> None:
    await conn.execute(update(respondents).where(respondents.c.id == respondent_id).values(
        state=state, language=state.get("lang"), submission_id=submission_id, updated_at=now))


async def update_submission(conn: AsyncConnection, submission_id: int, **values: Any) -> None:
    await conn.execute(update(submissions).where(submissions.c.id == submission_id)
                       .values(**values))


async def upsert_answers(conn: AsyncConnection, submission_id: int,
                         rows: Iterable[tuple[str, int, Any]], *, now: datetime,
                         message_id: str | None) -> None:
    """(question id, repeat index, value) rows; the latest value of a slot wins."""
    values = [{"submission_id": submission_id, "question_id": qid, "repeat_index": rep,
               "value": value, "value_code": flat_value(value), "answered_at": now,
               "channel_message_id": message_id} for qid, rep, value in rows]
    if not values:
        return
    dialect = sqlite if conn.dialect.name == "sqlite" else postgresql
    stmt = dialect.insert(answers)
    stmt = stmt.on_conflict_do_update(
        index_elements=["submission_id", "question_id", "repeat_index"],
        set_={"value": stmt.excluded.value, "value_code": stmt.excluded.value_code,
              "answered_at": stmt.excluded.answered_at,
              "channel_message_id": stmt.excluded.channel_message_id})
    await conn.execute(stmt, values)


async def delete_answers(conn: AsyncConnection, submission_id: int,
                         slots: Iterable[tuple[str, int]]) -> None:
    for qid, rep in slots:
        await conn.execute(delete(answers).where(and_(
            answers.c.submission_id == submission_id, answers.c.question_id == qid,
            answers.c.repeat_index == rep)))


async def insert_events(conn: AsyncConnection, rows: list[dict[str, Any]]) -> None:
    if rows:
        await conn.execute(insert(events), rows)


async def insert_outbox(conn: AsyncConnection, rows: list[dict[str, Any]]) -> list[int]:
    if not rows:
        return []
    if len(rows) == 1:
        result = await conn.execute(insert(outbox).returning(outbox.c.id), rows)
        return [result.scalar_one()]
    result = await conn.execute(insert(outbox).returning(outbox.c.id, sort_by_parameter_order=True),
                                rows)
    return list(result.scalars())


async def pending_outbox(conn: AsyncConnection, channel: str, limit: int = 500) -> list[Any]:
    stmt = (select(outbox).where(and_(outbox.c.status == "pending", outbox.c.channel == channel))
            .order_by(outbox.c.id).limit(limit))
    return list((await conn.execute(stmt)).mappings())


async def mark_outbox(conn: AsyncConnection, ids: Sequence[int], **values: Any) -> None:
    if ids:
        await conn.execute(update(outbox).where(outbox.c.id.in_(list(ids))).values(**values))


def dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
