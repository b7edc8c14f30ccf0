"""Builds the rows of the CSV export (submissions, activities, answers), streaming."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from bot.i18n import Translations
from bot.questionnaire import MULTI_TYPES, Question, Questionnaire
from bot.rules import Rules
from reports.cells import RISKY_FIRST, format_timestamp, neutralise, number_cell
from reports.codebook import CODEBOOK_HEADER, CODED_TYPES, DATA_TABLES, Codebook
from reports.options import ExportOptions
from storage import reads

logger = logging.getLogger(__name__)

TABLES = (*DATA_TABLES, "codebook")
NUMBER_TYPES = frozenset({"integer", "decimal"})

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


def _role_id(qn: Questionnaire, role: str) -> str | None:
    q = qn.by_role(role)
    return q.id if q is not None else None


class Exporter:
    """Turns stored submissions of one questionnaire into export rows, one pass, streaming.

    Rows are sequences of cells (str, int, None for empty), already neutralised against
    formula injection. The respondent, organization and country columns come from the
    questions with those roles (empty when the questionnaire has none).
    """

    def __init__(self, questionnaire: Questionnaire, translations: Translations,
                 options: ExportOptions | None = None, *, batch_rows: int = 5000) -> None:
        self.qn = questionnaire
        self.tr = translations
        self.options = options or ExportOptions()
        self.batch_rows = batch_rows
        lang = self.options.lang
        self._name_q = _role_id(questionnaire, "respondent_name")
        self._organization_q = _role_id(questionnaire, "organization")
        self._country_q = _role_id(questionnaire, "country")
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
        self._rules = Rules(questionnaire)  # completeness, by the engine's rules
        self.columns: dict[str, list[Column]] = {}
        self._fills: dict[str, dict[str, _Fill]] = {}
        top = [q for q in questionnaire.questions.values() if not q.repeated]
        rep = [q for q in questionnaire.questions.values() if q.repeated]
        self._build_wide("submissions", _SUBMISSION_META, top)
        self._build_wide("activities", _ACTIVITY_META, rep)
        long = ["submission_id", "question_id", "repeat_index", "value_code"]
        if lang:
            long.append("value_label")
        long += ["answered_at", "channel_message_id", "channel"]  # channel: the answer's
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
                for option in self.option_codes(q):
                    split[option] = len(cols)
                    cols.append(Column(f"{q.id}/{option}", "option", q, option))
            fills[q.id] = _Fill(pos, kind, label_pos, labels, split)
        self.columns[table] = cols
        self._fills[table] = fills

    def option_codes(self, q: Question) -> list[str]:
        source = self.qn.questions[q.options_from] if q.options_from else q
        return [o.code for o in source.options]

    def _labels(self, q: Question, lang: str) -> dict[str, str]:
        key = f"{q.type}:{q.option_list or q.options_from}"
        cached = self._label_cache.get(key)
        if cached is None:
            cached = {}
            for code in self.option_codes(q):
                try:
                    cached[code] = self.tr.option_label(lang, self.qn, q, code)
                except KeyError:
                    cached[code] = code
            self._label_cache[key] = cached
        return cached

    # -- rows ------------------------------------------------------------------------------

    def selection(self):
        """WHERE clause of the exported submission versions (latest per reference)."""
        return self.options.selection(self.qn).where()

    async def batches(self, conn: AsyncConnection,
                      tables: Iterable[str] = DATA_TABLES) -> AsyncIterator[ExportBatch]:
        """One pass over the selected submissions and their answers (storage.reads); yields
        batches of ready rows. Memory is bounded by the batch size, never by the data. Use a
        snapshot connection (`reading_connection`) so that both cursors see the same data."""
        wanted = set(tables)
        selection = self.options.selection(self.qn)
        runs = reads.submissions_with_answers(conn, selection, self.batch_rows)
        try:
            async for run in runs:
                batch = ExportBatch()
                for meta, rows in run:
                    self._submission(meta, rows, batch, wanted)
                yield batch
        finally:
            await runs.aclose()

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

    def codebook_rows(self) -> Iterator[list[Any]]:
        """Every column of the three data files, and under each coded question column every
        option code with its labels in the six languages (and the BCH GUID where known)."""
        return Codebook(self).rows()

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
        risky = RISKY_FIRST
        for row in rows:
            _sid, qid, rep, code, answered_at, message_id, _channel = row
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
        sid, qid, rep, code, answered_at, message_id, channel = row
        if code is None:
            cell = ""
        elif known is not None and known[1]:
            cell = number_cell(code)
        else:
            cell = neutralise(code)
        out = [sid, qid if known is not None else neutralise(qid), rep, cell]
        if lang:
            out.append(self._value_label(qid, code) if code else "")
        out += [format_timestamp(answered_at), neutralise(message_id) if message_id else "",
                channel or ""]
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
        name = values.get(self._name_q) or display_name or ""
        organization = values.get(self._organization_q) or ""
        country = values.get(self._country_q) or ""
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
        """Answered required questions / required questions that apply, by the engine's own
        rules (bot/rules.py)."""
        answers = dict(values)
        for rep, own in per_rep.items():
            answers.update({f"{qid}@{rep}": v for qid, v in own.items()})
        required = answered = 0
        rules = self._rules
        for slot in rules.slots(answers):
            if rules.is_required(slot, answers):
                required += 1
                if answers.get(slot.key) is not None:
                    answered += 1
        return f"{answered / required:.2f}" if required else ""


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
