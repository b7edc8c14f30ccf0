"""Builds the rows of the CSV export (submissions, activities, answers, codebook), streaming."""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pycountry
from sqlalchemy import String, and_, exists, select, type_coerce
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from bot.engine import Engine
from bot.i18n import LANGUAGES, Translations
from bot.questionnaire import MULTI_TYPES, Question, Questionnaire, default_questionnaire
from storage.db import Database, create_engine
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
    if isinstance(value, str):  # SQLite: stored UTC text, read without parsing (fast path)
        return value[:19].replace("T", " ")
    if value.tzinfo is not None:
        value = value.astimezone(UTC)
    return value.strftime("%Y-%m-%d %H:%M:%S")


DatabaseLike = AsyncEngine | Database


@contextlib.asynccontextmanager
async def reading_engine(db: DatabaseLike) -> AsyncIterator[AsyncEngine]:
    """The engine for a long read (export, statistics), given an AsyncEngine or a Database.

    On SQLite the application's engine holds a single connection, kept for conversation turns;
    a long read gets its own short-lived engine, and WAL lets turns commit meanwhile. Elsewhere
    the given engine's pool is used.
    """
    engine = db.engine if isinstance(db, Database) else db
    database = engine.url.database
    if engine.dialect.name != "sqlite" or database in (None, "", ":memory:") or \
            "mode=memory" in engine.url.render_as_string():
        yield engine
        return
    reader = create_engine(engine.url.render_as_string(hide_password=False))
    try:
        yield reader
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
    raw = text.strip()
    found = None
    if raw:
        try:
            found = pycountry.countries.lookup(raw)
        except LookupError:
            found = None
    if found is None:
        raise ExportOptionError("--country", f"unknown country {text!r} "
                                "(use an ISO 3166 code such as KE)")
    return found.alpha_2.lower()


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
_NUMERIC_META = frozenset({"submission_id", "version", "respondent_id", "repeat_index",
                           "completeness"})

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


@dataclass(slots=True)
class ExportBatch:
    """Rows built from a run of consecutive submissions; each list is ready for csv.writer."""

    submissions: list[list[Any]] = field(default_factory=list)
    activities: list[list[Any]] = field(default_factory=list)
    answers: list[list[Any]] = field(default_factory=list)

    def rows(self, table: str) -> list[list[Any]]:
        return getattr(self, table)

    def __bool__(self) -> bool:
        return bool(self.submissions or self.activities or self.answers)


class Exporter:
    """Turns stored submissions of one questionnaire into export rows, one pass, streaming.

    Rows are lists of `str`/`int` cells, already neutralised against formula injection.
    """

    def __init__(self, questionnaire: Questionnaire, translations: Translations,
                 options: ExportOptions | None = None, *, batch_rows: int = 5000) -> None:
        self.qn = questionnaire
        self.tr = translations
        self.options = options or ExportOptions()
        self.batch_rows = batch_rows
        self._engine = Engine(questionnaire, translations)
        lang = self.options.lang
        self._label_cache: dict[str, dict[str, str]] = {}
        self._countries = translations.country_names(lang) if lang else {}
        self._sections = {s.id: i for i, s in enumerate(questionnaire.sections)}
        self._repeated = {q.id for q in questionnaire.questions.values() if q.repeated}
        # Answer order in answers.csv: section, then activity, then question (as in the review).
        self._order = {q.id: self._sections[q.section] * 1_000_000 + i
                       for i, q in enumerate(questionnaire.questions.values())}
        self._unknown_order = len(questionnaire.sections) * 1_000_000
        self._types = {q.id: q.type for q in questionnaire.questions.values()}
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

    def _statement(self, conn: AsyncConnection):
        sqlite = conn.dialect.name == "sqlite"

        def ts(col):  # SQLite: the stored text as is, no per-row datetime parsing
            return type_coerce(col, String) if sqlite else col

        s, r, a = submissions, respondents, answers
        return (
            select(s.c.id, s.c.reference, s.c.version, s.c.questionnaire_version,
                   s.c.respondent_id, r.c.display_name, s.c.channel, s.c.language, s.c.status,
                   ts(s.c.started_at), ts(s.c.updated_at), ts(s.c.submitted_at),
                   a.c.question_id, a.c.repeat_index, a.c.value_code, ts(a.c.answered_at),
                   a.c.channel_message_id)
            .select_from(s.outerjoin(r, r.c.id == s.c.respondent_id)
                         .outerjoin(a, a.c.submission_id == s.c.id))
            .where(self.selection())
            .order_by(s.c.id)
        )

    # -- rows ------------------------------------------------------------------------------

    async def batches(self, conn: AsyncConnection,
                      tables: Iterable[str] = DATA_TABLES) -> AsyncIterator[ExportBatch]:
        """One pass over the selected submissions and their answers, ordered by submission;
        yields batches of ready rows. Memory is bounded by the batch size, not the data."""
        wanted = set(tables)
        stmt = self._statement(conn).execution_options(yield_per=self.batch_rows)
        result = await conn.stream(stmt)
        batch = ExportBatch()
        current = None
        meta: Any = None
        rows: list[tuple] = []
        try:
            async for partition in result.partitions():
                for row in partition:
                    sid = row[0]
                    if sid != current:
                        if current is not None:
                            self._submission(meta, rows, batch, wanted)
                        current, meta, rows = sid, row, []
                    if row[12] is not None:
                        rows.append(row[12:])
                if batch:
                    yield batch
                    batch = ExportBatch()
            if current is not None:
                self._submission(meta, rows, batch, wanted)
            if batch:
                yield batch
        finally:
            await result.close()

    async def rows(self, conn: AsyncConnection, table: str) -> AsyncIterator[list[Any]]:
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
        sid = meta[0]
        order, unknown = self._order, self._unknown_order
        rows.sort(key=lambda a: order.get(a[0], unknown) + a[1] * 1000)
        if "answers" in wanted:
            self._long_rows(sid, rows, batch.answers)
        if "submissions" in wanted:
            batch.submissions.append(self._submission_row(meta, rows))
        if "activities" in wanted and self._repeated:
            self._activity_rows(meta, rows, batch.activities)

    def _long_rows(self, sid: int, rows: list[tuple], out: list[list[Any]]) -> None:
        types = self._types
        lang = self.options.lang
        for qid, rep, code, answered_at, message_id in rows:
            qtype = types.get(qid)
            if code is None:
                cell = ""
            elif qtype in NUMBER_TYPES:
                cell = number_cell(code)
            else:
                cell = neutralise(code)
            if lang:
                label = self._value_label(qid, code) if code else ""
                out.append([sid, neutralise(qid), rep, cell, label,
                            format_timestamp(answered_at), neutralise(message_id or "")])
            else:
                out.append([sid, neutralise(qid), rep, cell, format_timestamp(answered_at),
                            neutralise(message_id or "")])

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

    def _submission_row(self, meta: Any, rows: list[tuple]) -> list[Any]:
        (sid, reference, version, qversion, respondent_id, display_name, channel, language,
         status, started_at, updated_at, submitted_at) = meta[:12]
        fills = self._fills["submissions"]
        row: list[Any] = [""] * len(self.columns["submissions"])
        name = organization = country = ""
        values: dict[str, Any] = {}
        for qid, rep, code, _at, _mid in rows:
            question = self.qn.questions.get(qid)
            if question is None:
                continue
            values[f"{qid}@{rep}" if question.repeated else qid] = _condition_value(
                question, code)
            if code is None or question.repeated:
                continue
            fill = fills.get(qid)
            if fill is not None:
                self._fill(row, fill, code)
            if qid == NAME_QUESTION:
                name = code
            elif qid == ORGANIZATION_QUESTION:
                organization = code
            elif qid == COUNTRY_QUESTION:
                country = code
        head = [sid, neutralise(reference), version, neutralise(qversion or ""),
                respondent_id if respondent_id is not None else "",
                neutralise(name or display_name or ""), neutralise(organization),
                neutralise(country), neutralise(channel or ""), neutralise(language or ""),
                neutralise(status), format_timestamp(started_at), format_timestamp(updated_at),
                format_timestamp(submitted_at), self._completeness(values)]
        if self.options.lang:  # country_label follows country
            head.insert(8, country and neutralise(self._countries.get(country,
                                                                      country.upper())))
        row[:len(head)] = head
        return row

    def _activity_rows(self, meta: Any, rows: list[tuple], out: list[list[Any]]) -> None:
        fills = self._fills["activities"]
        width = len(self.columns["activities"])
        current_rep = None
        row: list[Any] = []
        for qid, rep, code, _at, _mid in rows:
            fill = fills.get(qid)
            if fill is None:
                continue
            if rep != current_rep:
                current_rep = rep
                row = [""] * width
                row[:4] = [meta[0], neutralise(meta[1]), meta[2], rep]
                out.append(row)
            if code is not None:
                self._fill(row, fill, code)

    def _completeness(self, values: dict[str, Any]) -> str:
        """Answered required questions / required questions that apply (engine's rules)."""
        engine = self._engine
        required = answered = 0
        for slot in engine.slots(values):
            if engine.is_required(slot, values):
                required += 1
                if values.get(slot.key) is not None:
                    answered += 1
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
            for c in sorted(pycountry.countries, key=lambda c: c.alpha_2):
                code = c.alpha_2.lower()
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


def _condition_value(q: Question, code: str | None) -> Any:
    """The engine's value shape, rebuilt from value_code, as far as conditions need it."""
    if code is None:
        return None
    if q.type in MULTI_TYPES:
        return code.split(";") if code else []
    return code


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

