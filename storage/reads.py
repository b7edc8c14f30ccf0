"""The read side for reports: a snapshot connection, submission/answer streams, aggregates.

Plain SQL that returns rows; what the rows mean (columns, labels, questions) is decided by
`reports/`, which passes every question id in. Imports nothing from bot, handlers or reports.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from itertools import groupby
from operator import itemgetter
from typing import Any

from sqlalchemy import String, and_, case, event, exists, func, select, type_coerce
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from storage.db import Database
from storage.models import answers, events, outbox, respondents, submissions

logger = logging.getLogger(__name__)

DatabaseLike = AsyncEngine | Database


@contextlib.asynccontextmanager
async def reading_connection(db: DatabaseLike) -> AsyncIterator[AsyncConnection]:
    """A connection for a long read (export, statistics) whose queries all see one snapshot.

    SQLite: a short-lived engine of its own (the application's engine keeps its single
    connection for conversation turns) with an explicit BEGIN, so that several SELECTs share
    one snapshot; WAL lets turns commit meanwhile. PostgreSQL: REPEATABLE READ, READ ONLY.
    """
    engine = db.engine if isinstance(db, Database) else db
    if engine.dialect.name == "postgresql":
        async with engine.connect() as conn:
            conn = await conn.execution_options(isolation_level="REPEATABLE READ",
                                                postgresql_readonly=True)
            yield conn
        return
    url = engine.url
    if engine.dialect.name != "sqlite" or url.database in (None, "", ":memory:") or \
            "memory" in str(url.query.get("mode", "")):
        async with engine.connect() as conn:
            yield conn
        return
    reader = create_async_engine(url, poolclass=NullPool, connect_args={"timeout": 30})

    @event.listens_for(reader.sync_engine, "connect")
    def _connect(dbapi_connection, _record) -> None:
        dbapi_connection.isolation_level = None  # the driver's implicit transactions off
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA query_only=ON")
        cursor.close()

    @event.listens_for(reader.sync_engine, "begin")
    def _begin(conn) -> None:
        conn.exec_driver_sql("BEGIN")  # deferred: the snapshot is taken at the first read

    try:
        async with reader.connect() as conn:
            yield conn
    finally:
        await reader.dispose()


# -- submissions and their answers (the export) ---------------------------------------------


@dataclass(frozen=True)
class Selection:
    """Which submission versions to read: of one questionnaire, the latest version of each
    reference with the status (unless "all"), updated in [since, until), on one channel, with
    one answer (e.g. the country question's) at repeat 0 equal to a code."""

    questionnaire_id: str
    status: str = "submitted"  # or "all"
    since: datetime | None = None
    until: datetime | None = None
    channel: str | None = None
    answer: tuple[str, str] | None = None  # (question id, value_code)

    def where(self):
        """WHERE clause over `submissions` (latest version per reference)."""
        s = submissions
        newer = submissions.alias("newer")
        later = [newer.c.reference == s.c.reference, newer.c.version > s.c.version]
        conds = [s.c.questionnaire_id == self.questionnaire_id]
        if self.status != "all":
            conds.append(s.c.status == self.status)
            later.append(newer.c.status == self.status)
        conds.append(~exists().where(and_(*later)))
        if self.since is not None:
            conds.append(s.c.updated_at >= self.since)
        if self.until is not None:
            conds.append(s.c.updated_at < self.until)
        if self.channel is not None:
            conds.append(s.c.channel == self.channel)
        if self.answer is not None:
            question, code = self.answer
            a = answers.alias("country_answer")
            conds.append(exists().where(and_(a.c.submission_id == s.c.id,
                                             a.c.question_id == question,
                                             a.c.repeat_index == 0,
                                             a.c.value_code == code)))
        return and_(*conds)


def _timestamp_text(dialect: str, column):
    """The column as UTC 'YYYY-MM-DD HH:MM:SS' text, computed by the database."""
    if dialect == "sqlite":  # stored as UTC text with microseconds
        return func.substr(type_coerce(column, String), 1, 19).label(column.name)
    if dialect == "postgresql":
        return func.to_char(func.timezone("UTC", column), "YYYY-MM-DD HH24:MI:SS").label(
            column.name)
    return column  # formatted by the reader (reports.cells.format_timestamp)


def _statements(conn: AsyncConnection, selection: Selection):
    """Submission versions, and their answers, both in submission id order; timestamps
    come back as UTC text, so that an answer row as read is already an answers.csv row."""
    ts = partial(_timestamp_text, conn.dialect.name)
    s, r, a = submissions, respondents, answers
    where = selection.where()
    meta = (select(s.c.id, s.c.reference, s.c.version, s.c.questionnaire_version,
                   s.c.respondent_id, r.c.display_name, s.c.channel, s.c.language,
                   s.c.status, ts(s.c.started_at), ts(s.c.updated_at),
                   ts(s.c.submitted_at))
            .select_from(s.outerjoin(r, r.c.id == s.c.respondent_id))
            .where(where).order_by(s.c.id))
    # Ordered by the submission (a.submission_id = s.id): on SQLite the plan walks the
    # submissions in id order and each one's answers through the answers index, no sort.
    rows = (select(a.c.submission_id, a.c.question_id, a.c.repeat_index, a.c.value_code,
                   ts(a.c.answered_at), a.c.channel_message_id, a.c.channel)
            .select_from(s.join(a, a.c.submission_id == s.c.id))
            .where(where).order_by(s.c.id))
    return meta, rows


SubmissionRows = tuple[Sequence[Any], list[Sequence[Any]]]


async def submissions_with_answers(conn: AsyncConnection, selection: Selection,
                                   size: int = 5000) -> AsyncIterator[list[SubmissionRows]]:
    """One pass over the selected submission versions and their answers: two cursors in
    submission order, merged here. Yields runs of (submission, its answer rows), each run
    about `size` rows in all, so memory is bounded by `size`, never by the data.

    A submission row is (id, reference, version, questionnaire_version, respondent_id,
    display_name, channel, language, status, started_at, updated_at, submitted_at); an answer
    row is (submission_id, question_id, repeat_index, value_code, answered_at,
    channel_message_id, channel), timestamps as UTC text where the database can format them. Use a
    snapshot connection (`reading_connection`) so that both cursors see the same data."""
    meta_stmt, rows_stmt = _statements(conn, selection)
    metas = await conn.stream(meta_stmt.execution_options(yield_per=size))
    answer_rows = await conn.stream(rows_stmt.execution_options(yield_per=size))
    meta_parts = metas.partitions(size)
    groups = _AnswerGroups(answer_rows.partitions(size))
    run: list[SubmissionRows] = []
    consumed = 0  # answers (and submissions) read into this run
    try:
        while True:
            await groups.idle()  # one database call at a time on this connection
            meta_part = await anext(meta_parts, None)
            if meta_part is None:
                break
            for meta in meta_part:
                rows = await groups.take(meta[0])
                run.append((meta, rows))
                consumed += len(rows) + 1
                if consumed >= size:
                    yield run
                    run, consumed = [], 0
        if run:
            yield run
    finally:
        await groups.idle()
        await answer_rows.close()
        await metas.close()


class _AnswerGroups:
    """Answer rows (ordered by submission id) regrouped per submission, C-level `groupby` over
    each fetched partition; the next partition is fetched while the current one is used."""

    def __init__(self, parts: AsyncIterator[Any]) -> None:
        self._parts = parts
        self._pending: asyncio.Future | None = asyncio.ensure_future(anext(parts, None))
        self._groups: Iterator[Any] = iter(())
        self._head: tuple[int, list[Any]] | None = None

    async def idle(self) -> None:
        """Wait until no fetch is in flight (the result is kept for later)."""
        if self._pending is not None:
            await asyncio.wait([self._pending])

    async def _next_group(self) -> tuple[int, list[Any]] | None:
        while True:
            group = next(self._groups, None)
            if group is not None:
                return group[0], list(group[1])
            if self._pending is None:
                return None
            part = await self._pending
            if part is None:
                self._pending = None
                return None
            self._pending = asyncio.ensure_future(anext(self._parts, None))
            self._groups = groupby(part, key=_FIRST)

    async def take(self, sid: int) -> list[Any]:
        """The rows of submission `sid` (possibly spanning partitions); rows of submissions
        before it, which the selection no longer holds, are skipped."""
        found: list[Any] = []
        while True:
            group = self._head or await self._next_group()
            self._head = None
            if group is None:
                return found
            if group[0] < sid:
                continue
            if group[0] > sid:
                self._head = group
                return found
            found += group[1]


_FIRST = itemgetter(0)


# -- aggregates (the statistics) --------------------------------------------------------------


def _effective(questionnaire_id: str):
    """FROM clause: the version of each report (reference) that counts, joined as `submissions`:
    its latest submitted version, or, if it was never submitted, its latest version. An
    amendment in progress does not un-submit a report. (One grouped pass over the
    (reference, version) index; no correlated subqueries.)"""
    s = submissions
    v = (select(s.c.reference,
                func.max(case((s.c.status == "submitted", s.c.version))).label("submitted_v"),
                func.max(s.c.version).label("last_v"))
         .where(s.c.questionnaire_id == questionnaire_id)
         .group_by(s.c.reference).subquery("effective"))
    return v.join(s, and_(s.c.reference == v.c.reference,
                          s.c.version == func.coalesce(v.c.submitted_v, v.c.last_v)))


Counted = list[tuple[Any, str, int]]  # (value, status, reports)


async def reports_by(conn: AsyncConnection, questionnaire_id: str, column: str) -> Counted:
    """(value of the submissions column, status, count) over the report versions that count
    (see `_effective`); `column` is status, language or channel."""
    s = submissions
    col = s.c[column]
    stmt = (select(col, s.c.status, func.count()).select_from(_effective(questionnaire_id))
            .group_by(col, s.c.status))
    return [tuple(r) for r in (await conn.execute(stmt)).all()]


async def reports_by_answer(conn: AsyncConnection, questionnaire_id: str,
                            question_id: str) -> Counted:
    """(value_code of one question at repeat 0 or None, status, count) over the report
    versions that count."""
    s, a = submissions, answers
    join = _effective(questionnaire_id).outerjoin(a, and_(a.c.submission_id == s.c.id,
                                                          a.c.question_id == question_id,
                                                          a.c.repeat_index == 0))
    stmt = (select(a.c.value_code, s.c.status, func.count()).select_from(join)
            .group_by(a.c.value_code, s.c.status))
    return [tuple(r) for r in (await conn.execute(stmt)).all()]


async def amended_reports(conn: AsyncConnection, questionnaire_id: str) -> int:
    """Reports (references) with more than one version."""
    s = submissions
    return (await conn.execute(select(func.count(func.distinct(s.c.reference))).where(
        and_(s.c.questionnaire_id == questionnaire_id, s.c.version > 1)))).scalar_one()


async def amendments_in_progress(conn: AsyncConnection, questionnaire_id: str) -> int:
    """Reports whose latest version is an amendment not submitted (yet)."""
    s = submissions
    newer = submissions.alias("newer")
    return (await conn.execute(select(func.count()).where(and_(
        s.c.questionnaire_id == questionnaire_id, s.c.status != "submitted", s.c.version > 1,
        ~exists().where(and_(newer.c.reference == s.c.reference,
                             newer.c.version > s.c.version)))))).scalar_one()


async def refused_links(conn: AsyncConnection, limit: int = 50) -> list[Any]:
    """Deep links refused because their invitation is bound to another account: (when,
    invitation id, the invited person's e-mail, the chat that tried), latest first."""
    stmt = (select(events.c.created_at, events.c.data, respondents.c.email)
            .select_from(events.outerjoin(respondents,
                                          respondents.c.id == events.c.respondent_id))
            .where(events.c.type == "link_refused")
            .order_by(events.c.id.desc()).limit(limit))
    return list(await conn.execute(stmt))


async def opted_out_count(conn: AsyncConnection) -> int:
    stmt = select(func.count()).where(respondents.c.opted_out_at.is_not(None))
    return (await conn.execute(stmt)).scalar_one()


async def conversation_states(conn: AsyncConnection) -> AsyncIterator[list[Any]]:
    """Every respondent's conversation state (the JSON value), in partitions."""
    result = await conn.stream(select(respondents.c.state).execution_options(yield_per=1000))
    try:
        async for partition in result.partitions(2000):
            yield [state for (state,) in partition]
    finally:
        await result.close()


async def submitted_answer_codes(conn: AsyncConnection, questionnaire_id: str,
                                 question_ids: Sequence[str]) -> AsyncIterator[list[Any]]:
    """(submission_id, question_id, value_code) of the given questions, every repeat, over
    the submitted report versions that count; ordered by submission, in partitions."""
    s, a = submissions, answers
    stmt = (select(a.c.submission_id, a.c.question_id, a.c.value_code)
            .select_from(_effective(questionnaire_id).join(a, a.c.submission_id == s.c.id))
            .where(and_(s.c.status == "submitted", a.c.question_id.in_(list(question_ids)),
                        a.c.value_code.is_not(None)))
            .order_by(a.c.submission_id)
            .execution_options(yield_per=2000))
    result = await conn.stream(stmt)
    try:
        async for partition in result.partitions(2000):
            yield partition
    finally:
        await result.close()


async def undelivered(conn: AsyncConnection) -> list[tuple[str, str, str | None, int]]:
    """(channel, status, last_error, messages) of the outbox rows pending or failed; the
    biggest groups first within each channel and status."""
    stmt = (select(outbox.c.channel, outbox.c.status, outbox.c.last_error, func.count())
            .where(outbox.c.status.in_(("pending", "failed")))
            .group_by(outbox.c.channel, outbox.c.status, outbox.c.last_error)
            .order_by(outbox.c.channel, outbox.c.status, func.count().desc()))
    return [tuple(r) for r in (await conn.execute(stmt)).all()]
