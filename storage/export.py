"""Builds the rows of the CSV export (submissions, activities, answers, codebook), streaming."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from functools import partial
from itertools import groupby
from operator import itemgetter
from typing import Any

from sqlalchemy import String, and_, event, exists, func, select, type_coerce
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from bot.countries import country_table
from bot.i18n import LANGUAGES, Translations
from bot.questionnaire import (
    MULTI_TYPES,
    Condition,
    Question,
    Questionnaire,
    default_questionnaire,
)
from storage.db import Database
from storage.models import answers, respondents, submissions

logger = logging.getLogger(__name__)

DATA_TABLES = ("submissions", "activities", "answers")
TABLES = (*DATA_TABLES, "codebook")
STATUSES = ("submitted", "draft", "cancelled", "all")
CHANNELS = ("console", "telegram", "email")
CODED_TYPES = frozenset({"single_choice", "multi_choice", "yes_no", "country", "multi_country"})
NUMBER_TYPES = frozenset({"integer", "decimal"})
COUNTRY_QUESTION = "R5_country"
ORGANIZATION_QUESTION = "R3_org"
NAME_QUESTION = "R1_name"

# A cell starting with one of these is run as a formula by Excel, LibreOffice or Google Sheets
# (OWASP "CSV injection"); LF and the full-width forms that some spreadsheet locales fold to
# ASCII are added for safety.
FORMULA_TRIGGERS = frozenset("=+-@\t\r\n\uff1d\uff0b\uff0d\uff20")
_RISKY_FIRST = FORMULA_TRIGGERS | {"'"}  # cells starting otherwise are left as they are
_PLAIN_NUMBER = re.compile(r"-?[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")


class ExportOptionError(ValueError):
    """A bad export option; `str()` is one line that names the option."""

    def __init__(self, option: str, message: str) -> None:
        super().__init__(f"{option}: {message}")
        self.option = option
        self.message = message


def neutralise(text: str) -> str:
    """Make a cell inert in spreadsheets: prefix `'` when it would start a formula.

    Cells that already start with quotes followed by a trigger get one more quote, so that
    `restore()` is an exact inverse and the rule never loses information.
    """
    if not text:
        return text
    first = text[0]
    if first in FORMULA_TRIGGERS:
        return "'" + text
    if first == "'" and text.lstrip("'")[:1] in FORMULA_TRIGGERS:
        return "'" + text
    return text


def restore(cell: str) -> str:
    """The inverse of `neutralise()`: the text as the respondent typed it."""
    if cell[:1] == "'" and cell.lstrip("'")[:1] in FORMULA_TRIGGERS:
        return cell[1:]
    return cell


def number_cell(text: str) -> str:
    """A cell of a column that the question type says is a number: plain numbers stay as they
    are (so `-5` remains a number for Excel and pandas), anything else is neutralised."""
    return text if _PLAIN_NUMBER.fullmatch(text) else neutralise(text)


def format_timestamp(value: Any) -> str:
    """UTC `YYYY-MM-DD HH:MM:SS` (Excel and pandas read it as a date-time); '' for null."""
    if value is None:
        return ""
    if isinstance(value, str):  # already text (formatted by the database)
        return value[:19].replace("T", " ")
    if value.tzinfo is not None:
        value = value.astimezone(UTC)
    return value.strftime("%Y-%m-%d %H:%M:%S")


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


# -- options ----------------------------------------------------------------------------------


def _parse_when(option: str, text: str, *, end: bool) -> datetime:
    text = text.strip()
    try:
        if len(text) == 10:
            day = date.fromisoformat(text)
            moment = datetime(day.year, day.month, day.day)
            return (moment + timedelta(days=1) if end else moment).replace(tzinfo=UTC)
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ExportOptionError(option, f"{text!r} is not a date (use YYYY-MM-DD)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    moment = moment.astimezone(UTC)
    return moment + timedelta(microseconds=1) if end else moment


def _parse_country(text: str) -> str:
    found = country_table().lookup(text, "en").code if text.strip() else None
    if found is None:
        raise ExportOptionError("--country", f"unknown country {text!r} "
                                "(use an ISO 3166 code such as KE)")
    return found


@dataclass(frozen=True)
class ExportOptions:
    """What to export. `since` is inclusive and `until` exclusive (both UTC, on updated_at);
    build it from strings with `ExportOptions.parse`, which names the bad option."""

    status: str = "submitted"
    since: datetime | None = None
    until: datetime | None = None
    channel: str | None = None
    country: str | None = None  # ISO 3166-1 alpha-2, lower case (as answers store it)
    questionnaire: str | None = None  # None: the default questionnaire
    lang: str | None = None  # adds label columns in this language
    split_multi: bool = False

    @classmethod
    def parse(cls, *, status: str | None = None, since: str | None = None,
              until: str | None = None, channel: str | None = None,
              country: str | None = None, questionnaire: str | None = None,
              lang: str | None = None, split_multi: bool = False) -> ExportOptions:
        """Validate options given as text (command line, chat command)."""
        status = (status or "submitted").strip().lower()
        if status not in STATUSES:
            raise ExportOptionError("--status", f"unknown status {status!r} "
                                    f"(choose {', '.join(STATUSES)})")
        since_at = _parse_when("--since", since, end=False) if since else None
        until_at = _parse_when("--until", until, end=True) if until else None
        if since_at and until_at and until_at <= since_at:
            raise ExportOptionError("--until", "is before --since")
        if channel is not None:
            channel = channel.strip().lower()
            if channel not in CHANNELS:
                raise ExportOptionError("--channel", f"unknown channel {channel!r} "
                                        f"(choose {', '.join(CHANNELS)})")
        if lang is not None:
            lang = lang.strip().lower()
            if lang not in LANGUAGES:
                raise ExportOptionError("--lang", f"unknown language {lang!r} "
                                        f"(choose {', '.join(LANGUAGES)})")
        return cls(status=status, since=since_at, until=until_at, channel=channel,
                   country=_parse_country(country) if country is not None else None,
                   questionnaire=questionnaire.strip() if questionnaire else None,
                   lang=lang, split_multi=bool(split_multi))

    def pick_questionnaire(self, questionnaires: dict[str, Questionnaire]) -> Questionnaire:
        if self.questionnaire is None:
            return default_questionnaire(questionnaires, None)
        if self.questionnaire not in questionnaires:
            raise ExportOptionError("--questionnaire", f"unknown questionnaire "
                                    f"{self.questionnaire!r} (installed: "
                                    f"{', '.join(sorted(questionnaires))})")
        return questionnaires[self.questionnaire]


# -- columns ----------------------------------------------------------------------------------

_META_DESCRIPTIONS = {
    "submission_id": "Internal id of this submission version; answers.csv and activities.csv "
                     "refer to it",
    "reference": "Reference number given to the respondent (stable across amendments)",
    "version": "Version of the report: 1, then +1 for each amendment (only the latest version "
               "matching --status is exported)",
    "questionnaire_version": "Version of the questionnaire file the report was started with",
    "respondent_id": "Internal id of the respondent (one person on one channel)",
    "respondent": "Respondent's name (answer to R1_name, else the channel's display name)",
    "organization": "Organization (answer to R3_org)",
    "country": "Country, ISO 3166-1 alpha-2 in lower case as in the BCH (answer to R5_country)",
    "channel": "Channel used: console, telegram or email",
    "language": "Language of the conversation (ar, en, es, fr, ru, zh)",
    "status": "submitted, draft or cancelled (paused by the respondent)",
    "started_at": "When the conversation started (UTC)",
    "updated_at": "Last change (UTC)",
    "submitted_at": "When this version was submitted (UTC); empty for drafts",
    "completeness": "Required questions answered / required questions that apply, 0 to 1",
    "repeat_index": "Activity number within the submission, from 0 (0 outside the repeated "
                    "section in answers.csv)",
    "question_id": "Question id (codebook.csv describes each question and its codes)",
    "value_code": "The answer as stored: text, number, date, code; multi-choice codes joined "
                  "with ';'; money as 'amount currency'; empty when skipped",
    "value_label": "The answer's label in the --lang language (coded questions only)",
    "answered_at": "When the answer was last given or changed (UTC)",
    "channel_message_id": "Id of the message that carried the answer on its channel",
}
_SUBMISSION_META = ("submission_id", "reference", "version", "questionnaire_version",
                    "respondent_id", "respondent", "organization", "country", "channel",
                    "language", "status", "started_at", "updated_at", "submitted_at",
                    "completeness")
_ACTIVITY_META = ("submission_id", "reference", "version", "repeat_index")

# How a question column is filled from value_code.
_TEXT, _NUMBER, _MONEY, _SINGLE, _MULTI, _COUNTRY, _COUNTRIES = range(7)


@dataclass(frozen=True, slots=True)
class Column:
    """One column of an export file, as the codebook describes it."""

    name: str
    role: str  # meta | value | currency | label | option
    question: Question | None = None
    option: str | None = None  # option code of a --split-multi column


@dataclass(slots=True)
class _Fill:
    pos: int
    kind: int
    label_pos: int  # -1: no label column
    labels: dict[str, str] | None
    split: dict[str, int] | None  # option code -> column position (--split-multi)
    simple: bool = False  # one column holding value_code as is (unless it looks like a formula)

    def __post_init__(self) -> None:
        self.simple = self.kind != _MONEY and self.label_pos < 0 and self.split is None


@dataclass(slots=True)
class ExportBatch:
    """Rows built from a run of consecutive submissions; each row is a sequence of cells ready
    for csv.writer (str, int or None for an empty cell)."""

    submissions: list[Sequence[Any]] = field(default_factory=list)
    activities: list[Sequence[Any]] = field(default_factory=list)
    answers: list[Sequence[Any]] = field(default_factory=list)

    def rows(self, table: str) -> list[Sequence[Any]]:
        return getattr(self, table)

    def __bool__(self) -> bool:
        return bool(self.submissions or self.activities or self.answers)


class Exporter:
    """Turns stored submissions of one questionnaire into export rows, one pass, streaming.

    Rows are sequences of cells (str, int, None for empty), already neutralised against
    formula injection.
    """

    def __init__(self, questionnaire: Questionnaire, translations: Translations,
                 options: ExportOptions | None = None, *, batch_rows: int = 5000) -> None:
        self.qn = questionnaire
        self.tr = translations
        self.options = options or ExportOptions()
        self.batch_rows = batch_rows
        lang = self.options.lang
        self._label_cache: dict[str, dict[str, str]] = {}
        self._countries = translations.country_names(lang) if lang else {}
        self._sections = {s.id: i for i, s in enumerate(questionnaire.sections)}
        # Answer order in answers.csv: section, then activity, then question (as in the review).
        self._order = {q.id: self._sections[q.section] * 1_000_000 + i
                       for i, q in enumerate(questionnaire.questions.values())}
        self._unknown_order = len(questionnaire.sections) * 1_000_000
        referenced = set()
        for sec in questionnaire.sections:
            conds = [sec.ask_if] + [c for q in sec.questions for c in (q.ask_if, q.required_if)]
            for cond in conds:
                referenced.update(cond.questions() if cond is not None else ())
        # question id -> (repeated, number-typed, value split into a list for conditions)
        self._info = {q.id: (q.repeated, q.type in NUMBER_TYPES,
                             q.type in MULTI_TYPES and q.id in referenced)
                      for q in questionnaire.questions.values()}
        # Only questions that are or may be required count towards completeness.
        self._required_plan = [
            (_memo(sec.ask_if), sec.repeat_max, sec.more_question,
             [(q.id, _memo(q.ask_if), q.required, _memo(q.required_if))
              for q in sec.questions if q.required or q.required_if is not None])
            for sec in questionnaire.sections]
        self.columns: dict[str, list[Column]] = {}
        self._fills: dict[str, dict[str, _Fill]] = {}
        top = [q for q in questionnaire.questions.values() if not q.repeated]
        rep = [q for q in questionnaire.questions.values() if q.repeated]
        self._build_wide("submissions", _SUBMISSION_META, top)
        self._build_wide("activities", _ACTIVITY_META, rep)
        long = ["submission_id", "question_id", "repeat_index", "value_code"]
        if lang:
            long.append("value_label")
        long += ["answered_at", "channel_message_id"]
        self.columns["answers"] = [Column(n, "meta") for n in long]
        self._widths = {table: len(cols) for table, cols in self.columns.items()}

    # -- columns ---------------------------------------------------------------------------

    def header(self, table: str) -> list[str]:
        if table == "codebook":
            return list(CODEBOOK_HEADER)
        return [c.name for c in self.columns[table]]

    def _build_wide(self, table: str, meta: Iterable[str], questions: list[Question]) -> None:
        cols: list[Column] = []
        fills: dict[str, _Fill] = {}
        lang = self.options.lang
        for name in meta:
            cols.append(Column(name, "meta"))
            if name == "country" and lang:
                cols.append(Column("country_label", "label"))
        for q in questions:
            kind = _kind(q)
            pos = len(cols)
            cols.append(Column(q.id, "value", q))
            if kind == _MONEY:
                cols.append(Column(f"{q.id}_currency", "currency", q))
            label_pos, labels = -1, None
            if lang and q.type in CODED_TYPES:
                label_pos = len(cols)
                cols.append(Column(f"{q.id}_label", "label", q))
                if kind in (_SINGLE, _MULTI):
                    labels = self._labels(q, lang)
            split = None
            if self.options.split_multi and q.type == "multi_choice":
                split = {}
                for option in self._options(q):
                    split[option] = len(cols)
                    cols.append(Column(f"{q.id}/{option}", "option", q, option))
            fills[q.id] = _Fill(pos, kind, label_pos, labels, split)
        self.columns[table] = cols
        self._fills[table] = fills

    def _options(self, q: Question) -> list[str]:
        source = self.qn.questions[q.options_from] if q.options_from else q
        return [o.code for o in source.options]

    def _labels(self, q: Question, lang: str) -> dict[str, str]:
        key = f"{q.type}:{q.option_list or q.options_from}"
        cached = self._label_cache.get(key)
        if cached is None:
            cached = {}
            for code in self._options(q):
                try:
                    cached[code] = self.tr.option_label(lang, self.qn, q, code)
                except KeyError:
                    cached[code] = code
            self._label_cache[key] = cached
        return cached

    # -- query -----------------------------------------------------------------------------

    def selection(self):
        """WHERE clause of the exported submission versions (latest per reference)."""
        s, opts = submissions, self.options
        newer = submissions.alias("newer")
        later = [newer.c.reference == s.c.reference, newer.c.version > s.c.version]
        conds = [s.c.questionnaire_id == self.qn.id]
        if opts.status != "all":
            conds.append(s.c.status == opts.status)
            later.append(newer.c.status == opts.status)
        conds.append(~exists().where(and_(*later)))
        if opts.since is not None:
            conds.append(s.c.updated_at >= opts.since)
        if opts.until is not None:
            conds.append(s.c.updated_at < opts.until)
        if opts.channel is not None:
            conds.append(s.c.channel == opts.channel)
        if opts.country is not None:
            a = answers.alias("country_answer")
            conds.append(exists().where(and_(a.c.submission_id == s.c.id,
                                             a.c.question_id == COUNTRY_QUESTION,
                                             a.c.repeat_index == 0,
                                             a.c.value_code == opts.country)))
        return and_(*conds)

    def _statements(self, conn: AsyncConnection):
        """Submission versions, and their answers, both in submission id order; timestamps
        come back as UTC text, so that an answer row as read is already an answers.csv row."""
        ts = partial(_timestamp_text, conn.dialect.name)

        s, r, a = submissions, respondents, answers
        where = self.selection()
        meta = (select(s.c.id, s.c.reference, s.c.version, s.c.questionnaire_version,
                       s.c.respondent_id, r.c.display_name, s.c.channel, s.c.language,
                       s.c.status, ts(s.c.started_at), ts(s.c.updated_at),
                       ts(s.c.submitted_at))
                .select_from(s.outerjoin(r, r.c.id == s.c.respondent_id))
                .where(where).order_by(s.c.id))
        # Ordered by the submission (a.submission_id = s.id): on SQLite the plan walks the
        # submissions in id order and each one's answers through the answers index, no sort.
        rows = (select(a.c.submission_id, a.c.question_id, a.c.repeat_index, a.c.value_code,
                       ts(a.c.answered_at), a.c.channel_message_id)
                .select_from(s.join(a, a.c.submission_id == s.c.id))
                .where(where).order_by(s.c.id))
        return meta, rows

    # -- rows ------------------------------------------------------------------------------

    async def batches(self, conn: AsyncConnection,
                      tables: Iterable[str] = DATA_TABLES) -> AsyncIterator[ExportBatch]:
        """One pass over the selected submissions and their answers: two cursors in
        submission order, merged here; yields batches of ready rows. Memory is bounded by the
        batch size, never by the data. Use a snapshot connection (`reading_connection`) so that
        both cursors see the same data."""
        wanted = set(tables)
        size = self.batch_rows
        meta_stmt, rows_stmt = self._statements(conn)
        metas = await conn.stream(meta_stmt.execution_options(yield_per=size))
        answer_rows = await conn.stream(rows_stmt.execution_options(yield_per=size))
        meta_parts = metas.partitions(size)
        groups = _AnswerGroups(answer_rows.partitions(size))
        batch = ExportBatch()
        consumed = 0  # answers (and submissions) read into this batch, whatever is wanted
        try:
            while True:
                await groups.idle()  # one database call at a time on this connection
                meta_part = await anext(meta_parts, None)
                if meta_part is None:
                    break
                for meta in meta_part:
                    rows = await groups.take(meta[0])
                    self._submission(meta, rows, batch, wanted)
                    consumed += len(rows) + 1
                    if consumed >= size:
                        yield batch
                        batch, consumed = ExportBatch(), 0
            if batch:
                yield batch
        finally:
            await groups.idle()
            await answer_rows.close()
            await metas.close()

    async def rows(self, conn: AsyncConnection, table: str) -> AsyncIterator[Sequence[Any]]:
        """Every row of one file (header first), e.g. for a chat command or a test."""
        yield self.header(table)
        if table == "codebook":
            for row in self.codebook_rows():
                yield row
            return
        async for batch in self.batches(conn, (table,)):
            for row in batch.rows(table):
                yield row

    def _submission(self, meta: Any, rows: list[tuple], batch: ExportBatch,
                    wanted: set[str]) -> None:
        """All rows of one submission: answers.csv rows, its submissions.csv row and its
        activities.csv rows, in one loop over its answers."""
        sid = meta[0]
        order, unknown = self._order, self._unknown_order
        rows.sort(key=lambda a: order.get(a[1], unknown) + a[2] * 1000)
        long = batch.answers if "answers" in wanted else None
        want_sub = "submissions" in wanted
        acts = batch.activities if "activities" in wanted else None
        lang = self.options.lang
        info = self._info
        sub_fills = self._fills["submissions"]
        act_fills = self._fills["activities"]
        sub_row: list[Any] = [""] * self._widths["submissions"] if want_sub else []
        act_row: list[Any] = []
        act_rep = -1
        act_head = [sid, neutralise(meta[1]), meta[2]]
        values: dict[str, Any] = {}  # question id -> value, outside the repeated section
        per_rep: dict[int, dict[str, Any]] = {}  # activity -> question id -> value
        fill = self._fill
        risky = _RISKY_FIRST
        for row in rows:
            _sid, qid, rep, code, answered_at, message_id = row
            known = info.get(qid)
            if long is not None:
                if (known is not None and (code is None or code[:1] not in risky)
                        and (message_id is None or message_id[:1] not in risky)
                        and type(answered_at) is str and not lang):
                    long.append(row)  # most answers: the row as read is the CSV row
                else:
                    long.append(self._long_row(row, known, lang))
            if known is None:
                continue
            repeated, _number, split_for_conditions = known
            value = code.split(";") if split_for_conditions and code is not None else code
            if repeated:
                found = per_rep.get(rep)
                if found is None:
                    found = per_rep[rep] = {}
                found[qid] = value
                if acts is not None:
                    if rep != act_rep:
                        act_rep = rep
                        act_row = [""] * self._widths["activities"]
                        act_row[:4] = [*act_head, rep]
                        acts.append(act_row)
                    if code is not None:
                        f = act_fills[qid]
                        if f.simple and code[:1] not in risky:
                            act_row[f.pos] = code
                        else:
                            fill(act_row, f, code)
            else:
                values[qid] = value
                if want_sub and code is not None:
                    f = sub_fills[qid]
                    if f.simple and code[:1] not in risky:
                        sub_row[f.pos] = code
                    else:
                        fill(sub_row, f, code)
        if want_sub:
            batch.submissions.append(self._submission_row(meta, sub_row, values, per_rep))

    def _long_row(self, row: Any, known: tuple | None, lang: str | None) -> list[Any]:
        """An answers.csv row that needs work: neutralising, a label, a timestamp."""
        sid, qid, rep, code, answered_at, message_id = row
        if code is None:
            cell = ""
        elif known is not None and known[1]:
            cell = number_cell(code)
        else:
            cell = neutralise(code)
        out = [sid, qid if known is not None else neutralise(qid), rep, cell]
        if lang:
            out.append(self._value_label(qid, code) if code else "")
        out += [format_timestamp(answered_at), neutralise(message_id) if message_id else ""]
        return out

    def _value_label(self, qid: str, code: str) -> str:
        q = self.qn.questions.get(qid)
        if q is None or q.type not in CODED_TYPES:
            return ""
        if q.type in ("country", "multi_country"):
            names = self._countries
            return neutralise("; ".join(names.get(c, c.upper()) for c in code.split(";")))
        labels = self._labels(q, self.options.lang or "en")
        if q.type == "multi_choice":
            return neutralise("; ".join(labels.get(c, c) for c in code.split(";")))
        return neutralise(labels.get(code, code))

    def _fill(self, row: list[Any], fill: _Fill, code: str) -> None:
        kind = fill.kind
        if kind == _TEXT:
            row[fill.pos] = neutralise(code)
        elif kind == _NUMBER:
            row[fill.pos] = number_cell(code)
        elif kind == _MONEY:
            amount, _, currency = code.rpartition(" ")
            if not amount:
                amount, currency = currency, ""
            row[fill.pos] = number_cell(amount)
            row[fill.pos + 1] = neutralise(currency)
        else:
            row[fill.pos] = neutralise(code)
            if fill.label_pos >= 0:
                if kind == _SINGLE:
                    row[fill.label_pos] = neutralise(fill.labels.get(code, code))
                elif kind == _MULTI:
                    labels = fill.labels
                    row[fill.label_pos] = neutralise("; ".join(labels.get(c, c)
                                                               for c in code.split(";")))
                else:
                    names = self._countries
                    row[fill.label_pos] = neutralise("; ".join(
                        names.get(c, c.upper()) for c in code.split(";")))
        split = fill.split
        if split is not None:
            for pos in split.values():
                row[pos] = 0
            for c in code.split(";") if code else ():
                pos = split.get(c)
                if pos is not None:
                    row[pos] = 1

    def _submission_row(self, meta: Any, row: list[Any], values: dict[str, Any],
                        per_rep: dict[int, dict[str, Any]]) -> list[Any]:
        (sid, reference, version, qversion, respondent_id, display_name, channel, language,
         status, started_at, updated_at, submitted_at) = meta
        name = values.get(NAME_QUESTION) or display_name or ""
        organization = values.get(ORGANIZATION_QUESTION) or ""
        country = values.get(COUNTRY_QUESTION) or ""
        head = [sid, neutralise(reference), version, neutralise(qversion or ""),
                respondent_id if respondent_id is not None else "", neutralise(name),
                neutralise(organization), neutralise(country), neutralise(channel or ""),
                neutralise(language or ""), neutralise(status), format_timestamp(started_at),
                format_timestamp(updated_at), format_timestamp(submitted_at),
                self._completeness(values, per_rep)]
        if self.options.lang:  # country_label follows country
            head.insert(8, country and neutralise(self._countries.get(country,
                                                                      country.upper())))
        row[:len(head)] = head
        return row

    def _completeness(self, values: dict[str, Any],
                      per_rep: dict[int, dict[str, Any]]) -> str:
        """Answered required questions / required questions that apply, by the engine's rules
        (section and question conditions; activities repeat while 'more' says YES; inside an
        activity a question reads that activity's answer, else the one outside it)."""
        get = values.get
        required = answered = 0
        for ask_if, repeat_max, more, questions in self._required_plan:
            if ask_if is not None and not ask_if.holds(get):
                continue
            if repeat_max == 1:
                for qid, q_ask_if, always, required_if in questions:
                    if q_ask_if is not None and not q_ask_if.holds(get):
                        continue
                    if always or required_if.holds(get):
                        required += 1
                        if get(qid) is not None:
                            answered += 1
                continue
            rep = 0
            while True:
                own = per_rep.get(rep, _EMPTY)
                here = {**values, **{k: v for k, v in own.items() if v is not None}}.get
                last = rep + 1 >= repeat_max
                for qid, q_ask_if, always, required_if in questions:
                    if last and qid == more:
                        continue
                    if q_ask_if is not None and not q_ask_if.holds(here):
                        continue
                    if always or required_if.holds(here):
                        required += 1
                        if own.get(qid) is not None:
                            answered += 1
                if last or own.get(more) != "YES":
                    break
                rep += 1
        return f"{answered / required:.2f}" if required else ""

    # -- codebook --------------------------------------------------------------------------

    def codebook_rows(self) -> Iterator[list[Any]]:
        """Every column of the three data files, and under each coded question column every
        option code with its labels in the six languages (and the BCH GUID where known)."""
        for table in DATA_TABLES:
            file = f"{table}.csv"
            for col in self.columns[table]:
                yield from self._codebook_column(file, col)

    def _codebook_column(self, file: str, col: Column) -> Iterator[list[Any]]:
        empty_labels = [""] * len(LANGUAGES)
        q = col.question
        if q is None:
            if col.role == "label":  # country_label
                desc = f"Country name in {self.options.lang}"
            else:
                desc = _META_DESCRIPTIONS.get(col.name, "")
            yield _row([file, col.name, "", "", "", "", "", "", "", *empty_labels, "", desc])
            return
        base = [file, col.name, q.id, q.section, q.type, _required(q), _ask_if(self.qn, q),
                self._list_name(q)]
        if col.role == "value":
            prompts = [self._prompt(lang, q) for lang in LANGUAGES]
            yield _row([*base, "", *prompts, "", _value_description(q)])
            yield from self._codebook_options(base, q)
        elif col.role == "currency":
            yield _row([*base, "", *empty_labels, "", f"ISO 4217 currency code of {q.id}"])
        elif col.role == "label":
            yield _row([*base, "", *empty_labels, "",
                        f"Label of {q.id} in {self.options.lang}"])
        else:  # one --split-multi column
            option = col.option or ""
            labels = [self._option_label(lang, q, option) for lang in LANGUAGES]
            yield _row([*base, option, *labels, self._bch_ref(q, option),
                        f"1 if {option} was chosen for {q.id}, 0 if not, empty if unanswered"])

    def _codebook_options(self, base: list[Any], q: Question) -> Iterator[list[Any]]:
        if q.type in ("country", "multi_country"):
            names = {lang: self._country_names(lang) for lang in LANGUAGES}
            for code in country_table().countries:
                yield _row([*base, code, *(names[lang].get(code, "") for lang in LANGUAGES),
                            "", ""])
        elif q.type in CODED_TYPES:
            for option in self._options(q):
                yield _row([*base, option,
                            *(self._option_label(lang, q, option) for lang in LANGUAGES),
                            self._bch_ref(q, option), ""])

    def _list_name(self, q: Question) -> str:
        if q.type == "yes_no":
            return "yes_no"
        if q.type in ("country", "multi_country"):
            return "country"
        if q.options_from:
            return self.qn.questions[q.options_from].option_list or ""
        return q.option_list or ""

    def _bch_ref(self, q: Question, code: str) -> str:
        source = self.qn.questions[q.options_from] if q.options_from else q
        return next((o.bch_ref or "" for o in source.options if o.code == code), "")

    def _country_names(self, lang: str) -> dict[str, str]:
        return self.tr.country_names(lang) if lang in self.tr.languages else {}

    def _prompt(self, lang: str, q: Question) -> str:
        if lang not in self.tr.languages:
            return ""
        other = None
        if q.other_of:
            parent = self.qn.questions[q.other_of]
            free = [o.code for o in parent.options if o.free_text]
            other = self._option_label(lang, parent, free[0]) if free else None
        try:
            return self.tr.question_prompt(lang, self.qn, q, other)
        except KeyError:
            return ""

    def _option_label(self, lang: str, q: Question, code: str) -> str:
        if lang not in self.tr.languages:
            return ""
        try:
            return self.tr.option_label(lang, self.qn, q, code)
        except KeyError:
            return ""


CODEBOOK_HEADER = ("file", "column", "question_id", "section", "type", "required", "ask_if",
                   "option_list", "code", *(f"label_{lang}" for lang in LANGUAGES), "bch_ref",
                   "description")


class _Memo:
    """A condition whose result is memoized on the values of the questions it reads (most
    reports share them), with the questionnaire model's own evaluation on a miss."""

    __slots__ = ("cache", "condition", "refs", "single")

    def __init__(self, condition: Condition) -> None:
        self.condition = condition
        self.refs = tuple(dict.fromkeys(condition.questions()))
        self.single = self.refs[0] if len(self.refs) == 1 else None
        self.cache: dict[Any, bool] = {}

    def holds(self, get) -> bool:
        if self.single is not None:
            key = get(self.single)
            if type(key) is list:
                key = tuple(key)
        else:
            key = tuple([tuple(v) if type(v) is list else v for v in map(get, self.refs)])
        found = self.cache.get(key)
        if found is None:
            if len(self.cache) >= 4096:
                self.cache.clear()
            found = self.cache[key] = self.condition.holds(get)
        return found


def _memo(condition: Condition | None) -> _Memo | None:
    return _Memo(condition) if condition is not None else None


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
_EMPTY: dict[str, Any] = {}


def _timestamp_text(dialect: str, column):
    """The column as UTC 'YYYY-MM-DD HH:MM:SS' text, computed by the database."""
    if dialect == "sqlite":  # stored as UTC text with microseconds
        return func.substr(type_coerce(column, String), 1, 19).label(column.name)
    if dialect == "postgresql":
        return func.to_char(func.timezone("UTC", column), "YYYY-MM-DD HH24:MI:SS").label(
            column.name)
    return column  # formatted in Python (format_timestamp)


def _row(cells: list[Any]) -> list[Any]:
    return [neutralise(c) if isinstance(c, str) else c for c in cells]


def _kind(q: Question) -> int:
    if q.type in NUMBER_TYPES:
        return _NUMBER
    if q.type == "money":
        return _MONEY
    if q.type in ("single_choice", "yes_no"):
        return _SINGLE
    if q.type == "multi_choice":
        return _MULTI
    if q.type == "country":
        return _COUNTRY
    if q.type == "multi_country":
        return _COUNTRIES
    return _TEXT


def _required(q: Question) -> str:
    if q.required:
        return "yes"
    return "conditional" if q.required_if else "no"


def _ask_if(qn: Questionnaire, q: Question) -> str:
    parts = []
    section = next(s for s in qn.sections if s.id == q.section)
    for cond in (section.ask_if, q.ask_if):
        if cond is not None:
            parts.append(cond.model_dump(mode="json", by_alias=True, exclude_none=True))
    if not parts:
        return ""
    value = parts[0] if len(parts) == 1 else {"all": parts}
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _value_description(q: Question) -> str:
    return {
        "multi_choice": "Codes joined with ';'",
        "multi_country": "ISO 3166-1 alpha-2 codes (lower case) joined with ';'",
        "country": "ISO 3166-1 alpha-2 code, lower case",
        "money": "Amount (a number); the currency is in the next column",
        "integer": "Whole number",
        "decimal": "Number",
        "year_month": "YYYY-MM",
        "date": "YYYY-MM-DD",
        "yes_no": "YES or NO",
        "single_choice": "One code",
    }.get(q.type, "Text as typed" + (f"; answers 'please specify' for {q.other_of}"
                                     if q.other_of else ""))

