"""Core SQL for the turn path: one function per statement, run on a synchronous Connection.

The service calls these inside one transaction per batch of turns: in the SQLite writer
thread, or through Connection.run_sync() on PostgreSQL.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, bindparam, delete, func, insert, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from storage.models import (
    addresses,
    answers,
    events,
    inbound_messages,
    outbox,
    respondents,
    submissions,
)


def _insert_ignore(conn: Connection, table, conflict_cols: Sequence[str]):
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


def insert_inbound(conn: Connection, *, channel: str, message_id: str,
                         user_id: str | None, kind: str, payload: str, status: str,
                         reason: str | None, now: datetime) -> int | None:
    """Record an inbound message; None when this channel id was seen before (a duplicate)."""
    stmt = _insert_ignore(conn, inbound_messages, ["channel", "channel_message_id"]).values(
        channel=channel, channel_message_id=message_id, channel_user_id=user_id, kind=kind,
        payload=payload, status=status, reason=reason, received_at=now,
    ).returning(inbound_messages.c.id)
    return (conn.execute(stmt)).scalar()


def create_respondent(conn: Connection, *, channel: str, user_id: str,
                      display_name: str | None, state: dict, language: str | None,
                      now: datetime) -> int:
    stmt = insert(respondents).values(
        channel=channel, channel_user_id=user_id, display_name=display_name, state=state,
        language=language, unreachable=False, last_channel=channel, created_at=now,
        updated_at=now,
    ).returning(respondents.c.id)
    respondent_id = (conn.execute(stmt)).scalar_one()
    add_address(conn, respondent_id=respondent_id, channel=channel, user_id=user_id, now=now)
    return respondent_id


def add_address(conn: Connection, *, respondent_id: int, channel: str, user_id: str,
                now: datetime) -> None:
    conn.execute(insert(addresses).values(respondent_id=respondent_id, channel=channel,
                                          channel_user_id=user_id, unreachable=False,
                                          created_at=now))


def address_owner(conn: Connection, channel: str, user_id: str) -> int | None:
    """The respondent an address belongs to, if any."""
    stmt = select(addresses.c.respondent_id).where(and_(
        addresses.c.channel == channel, addresses.c.channel_user_id == user_id))
    return conn.execute(stmt).scalar()


def address_language(conn: Connection, channel: str, user_id: str) -> str | None:
    """The conversation language of the respondent an address belongs to, if known."""
    stmt = (select(respondents.c.language)
            .select_from(addresses.join(respondents,
                                        addresses.c.respondent_id == respondents.c.id))
            .where(and_(addresses.c.channel == channel, addresses.c.channel_user_id == user_id)))
    return conn.execute(stmt).scalar()


def respondent_address(conn: Connection, respondent_id: int, channel: str) -> str | None:
    """The respondent's (first) address on a channel."""
    stmt = (select(addresses.c.channel_user_id)
            .where(and_(addresses.c.respondent_id == respondent_id,
                        addresses.c.channel == channel))
            .order_by(addresses.c.id).limit(1))
    return conn.execute(stmt).scalar()


def move_address(conn: Connection, *, channel: str, user_id: str, respondent_id: int,
                 now: datetime) -> None:
    """Bind an address to a respondent: moved when it had another owner, added otherwise."""
    moved = conn.execute(update(addresses).where(and_(
        addresses.c.channel == channel, addresses.c.channel_user_id == user_id)).values(
        respondent_id=respondent_id, unreachable=False)).rowcount
    if not moved:
        add_address(conn, respondent_id=respondent_id, channel=channel, user_id=user_id,
                    now=now)


def create_submission(conn: Connection, *, respondent_id: int, conversation: Any,
                      channel: str, now: datetime, supersedes_id: int | None = None) -> int:
    """A draft row for `conversation` (questionnaire, version, reference, language)."""
    c = conversation
    stmt = insert(submissions).values(
        respondent_id=respondent_id, questionnaire_id=c.questionnaire_id,
        questionnaire_version=c.questionnaire_version, reference=c.reference,
        version=c.version, supersedes_id=supersedes_id, status="draft",
        language=c.language, channel=channel, started_at=now, updated_at=now,
    ).returning(submissions.c.id)
    return (conn.execute(stmt)).scalar_one()


def update_submission(conn: Connection, submission_id: int, **values: Any) -> None:
    conn.execute(update(submissions).where(submissions.c.id == submission_id)
                       .values(**values))


def upsert_answers(conn: Connection, submission_id: int,
                         rows: Iterable[tuple[str, int, Any]], *, now: datetime,
                         message_id: str | None, channel: str | None = None) -> None:
    """(question id, repeat index, value) rows; the latest value of a slot wins."""
    upsert_answer_rows(conn, [answer_row(submission_id, qid, rep, value, now, message_id,
                                         channel) for qid, rep, value in rows])


def delete_answers(conn: Connection, submission_id: int,
                         slots: Iterable[tuple[str, int]]) -> None:
    for qid, rep in slots:
        conn.execute(delete(answers).where(and_(
            answers.c.submission_id == submission_id, answers.c.question_id == qid,
            answers.c.repeat_index == rep)))


def insert_events(conn: Connection, rows: list[dict[str, Any]]) -> None:
    if rows:
        conn.execute(insert(events), rows)


def insert_outbox(conn: Connection, rows: list[dict[str, Any]]) -> list[int]:
    if not rows:
        return []
    if len(rows) == 1:
        result = conn.execute(insert(outbox).returning(outbox.c.id), rows)
        return [result.scalar_one()]
    result = conn.execute(insert(outbox).returning(outbox.c.id, sort_by_parameter_order=True),
                                rows)
    return list(result.scalars())


def pending_outbox(conn: Connection, channel: str, limit: int = 500,
                   created_before: datetime | None = None) -> list[Any]:
    """Pending rows of a channel, oldest first; `created_before`: only rows older than that
    (the periodic sweep of a replica leaves the rows other replicas just committed to
    them)."""
    where = [outbox.c.status == "pending", outbox.c.channel == channel]
    if created_before is not None:
        where.append(outbox.c.created_at <= created_before)
    stmt = select(outbox).where(and_(*where)).order_by(outbox.c.id).limit(limit)
    return list((conn.execute(stmt)).mappings())


def claim_outbox(conn: Connection, *, row_id: int, owner: str, now: datetime,
                 until: datetime) -> tuple[bool, datetime | None]:
    """Take the lease on a pending row before sending it.

    (True, None): claimed. (False, until): another holder's lease runs until then.
    (False, None): the row is no longer pending (sent, failed or coalesced).
    """
    free = or_(outbox.c.lease_until.is_(None), outbox.c.lease_until <= now,
               outbox.c.lease_owner == owner)
    claimed = conn.execute(
        update(outbox).where(and_(outbox.c.id == row_id, outbox.c.status == "pending", free))
        .values(attempts=outbox.c.attempts + 1, lease_owner=owner, lease_until=until)).rowcount
    if claimed:
        return True, None
    row = conn.execute(select(outbox.c.status, outbox.c.lease_until)
                       .where(outbox.c.id == row_id)).one_or_none()
    if row is None or row.status != "pending" or row.lease_until is None:
        return False, None
    held = row.lease_until
    return False, held if held.tzinfo else held.replace(tzinfo=UTC)


CLAIM_BUSY = timedelta(seconds=0.2)  # ask again this soon about a row another claim locks


def claim_outbox_rows(conn: Connection, *, row_ids: Sequence[int], owner: str, now: datetime,
                      until: datetime) -> dict[int, tuple[bool, datetime | None]]:
    """claim_outbox for several rows in one transaction (one durable commit for all).

    On PostgreSQL the free rows are locked with FOR UPDATE SKIP LOCKED: a row that another
    replica is claiming or marking at this moment is skipped, not waited for, and reported
    held for CLAIM_BUSY (the caller asks again; by then that claim is committed and its
    lease tells who sends)."""
    if conn.dialect.name != "postgresql":
        return {row_id: claim_outbox(conn, row_id=row_id, owner=owner, now=now, until=until)
                for row_id in row_ids}
    ids = sorted(set(row_ids))
    free = or_(outbox.c.lease_until.is_(None), outbox.c.lease_until <= now,
               outbox.c.lease_owner == owner)
    mine = set(conn.execute(
        select(outbox.c.id).where(and_(outbox.c.id.in_(ids), outbox.c.status == "pending",
                                       free))
        .with_for_update(skip_locked=True)).scalars())
    if mine:
        conn.execute(update(outbox).where(outbox.c.id.in_(sorted(mine))).values(
            attempts=outbox.c.attempts + 1, lease_owner=owner, lease_until=until))
    results: dict[int, tuple[bool, datetime | None]] = {
        row_id: (True, None) for row_id in mine}
    others = [row_id for row_id in ids if row_id not in mine]
    if others:
        found = {row.id: row for row in conn.execute(
            select(outbox.c.id, outbox.c.status, outbox.c.lease_until)
            .where(outbox.c.id.in_(others)))}
        for row_id in others:
            row = found.get(row_id)
            if row is None or row.status != "pending":
                results[row_id] = (False, None)
            elif row.lease_until is None or _aware(row.lease_until) <= now:
                results[row_id] = (False, now + CLAIM_BUSY)  # locked by a claim under way
            else:
                results[row_id] = (False, _aware(row.lease_until))
    return {row_id: results[row_id] for row_id in row_ids}


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def mark_outbox(conn: Connection, ids: Sequence[int], **values: Any) -> None:
    if ids:
        conn.execute(update(outbox).where(outbox.c.id.in_(list(ids))).values(**values))


def mark_outbox_rows(conn: Connection, *, marks: Sequence[tuple[int, str, str | None]],
                     now: datetime) -> None:
    """(row id, status, error) marks: one UPDATE per distinct (status, error); lease ended."""
    grouped: dict[tuple[str, str | None], list[int]] = {}
    for row_id, status, error in marks:
        grouped.setdefault((status, error), []).append(row_id)
    for (status, error), ids in grouped.items():
        values: dict[str, Any] = {"status": status, "lease_until": None}
        if status == "sent":
            values["sent_at"] = now
        if error is not None:
            values["last_error"] = error
        mark_outbox(conn, ids, **values)


def failed_outbox(conn: Connection) -> list[Any]:
    """(channel, last_error, count) of the rows given up on: what `capbot stats` reports."""
    stmt = (select(outbox.c.channel, outbox.c.last_error, func.count().label("count"))
            .where(outbox.c.status == "failed")
            .group_by(outbox.c.channel, outbox.c.last_error)
            .order_by(outbox.c.channel, func.count().desc()))
    return list(conn.execute(stmt))


def retry_failed_outbox(conn: Connection, *, channel: str | None = None,
                        include_unreachable: bool = False) -> int:
    """Put rows given up on back to pending; the running dispatcher's sweep sends them."""
    where = [outbox.c.status == "failed"]
    if channel:
        where.append(outbox.c.channel == channel)
    if not include_unreachable:
        reachable = select(respondents.c.id).where(respondents.c.unreachable.is_(False))
        where.append(or_(outbox.c.respondent_id.is_(None),
                         outbox.c.respondent_id.in_(reachable)))
    return conn.execute(update(outbox).where(and_(*where)).values(
        status="pending", attempts=0, lease_owner=None, lease_until=None,
        not_before=None)).rowcount


def existing_inbound(conn: Connection, channel: str,
                           message_ids: Sequence[str]) -> set[str]:
    stmt = select(inbound_messages.c.channel_message_id).where(and_(
        inbound_messages.c.channel == channel,
        inbound_messages.c.channel_message_id.in_(list(message_ids))))
    return set((conn.execute(stmt)).scalars())


def insert_inbound_many(conn: Connection, rows: list[dict[str, Any]]) -> None:
    if rows:
        conn.execute(insert(inbound_messages), rows)


def load_respondents(conn: Connection, channel: str, user_ids: Sequence[str], *,
                           lock: bool) -> dict[str, Any]:
    """channel user id -> row (id, state, submission_id) for the users of one batch.

    An address leads to its respondent, whichever channel that person started on."""
    stmt = (select(respondents.c.id, addresses.c.channel_user_id, respondents.c.state,
                   respondents.c.submission_id)
            .select_from(addresses.join(respondents,
                                        addresses.c.respondent_id == respondents.c.id))
            .where(and_(addresses.c.channel == channel,
                        addresses.c.channel_user_id.in_(list(user_ids))))
            .order_by(respondents.c.id))
    if lock and conn.dialect.name == "postgresql":
        # several replicas: one turn per respondent at a time
        stmt = stmt.with_for_update(of=respondents)
    return {row.channel_user_id: row for row in conn.execute(stmt)}


def save_states(conn: Connection, rows: list[dict[str, Any]]) -> None:
    """rows of {rid, state, language, submission_id, updated_at}: one executemany."""
    if rows:
        stmt = update(respondents).where(respondents.c.id == bindparam("rid")).values(
            state=bindparam("state"), language=bindparam("language"),
            submission_id=bindparam("sid"), last_channel=bindparam("last"),
            updated_at=bindparam("now"))
        conn.execute(stmt, rows)


def touch_submissions(conn: Connection, rows: list[dict[str, Any]]) -> None:
    """rows of {sid, now}: bump updated_at of submissions whose answers changed."""
    if rows:
        stmt = update(submissions).where(submissions.c.id == bindparam("sid")).values(
            updated_at=bindparam("now"))
        conn.execute(stmt, rows)


def upsert_answer_rows(conn: Connection, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    dialect = sqlite if conn.dialect.name == "sqlite" else postgresql
    stmt = dialect.insert(answers)
    stmt = stmt.on_conflict_do_update(
        index_elements=["submission_id", "question_id", "repeat_index"],
        set_={"value": stmt.excluded.value, "value_code": stmt.excluded.value_code,
              "answered_at": stmt.excluded.answered_at,
              "channel_message_id": stmt.excluded.channel_message_id,
              "channel": stmt.excluded.channel})
    conn.execute(stmt, rows)


def answer_row(submission_id: int, qid: str, repeat: int, value: Any, now: datetime,
               message_id: str | None, channel: str | None = None) -> dict[str, Any]:
    return {"submission_id": submission_id, "question_id": qid, "repeat_index": repeat,
            "value": value, "value_code": flat_value(value), "answered_at": now,
            "channel_message_id": message_id, "channel": channel}


def dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def set_unreachable(conn: Connection, *, channel: str, user_id: str, unreachable: bool,
                    now: datetime) -> int:
    """Mark an address (un)reachable (bot blocked, address bouncing)."""
    conn.execute(update(addresses)
                 .where(and_(addresses.c.channel == channel,
                             addresses.c.channel_user_id == user_id))
                 .values(unreachable=unreachable))
    stmt = (update(respondents)
            .where(and_(respondents.c.channel == channel,
                        respondents.c.channel_user_id == user_id,
                        respondents.c.unreachable != unreachable))
            .values(unreachable=unreachable, updated_at=now))
    return conn.execute(stmt).rowcount
