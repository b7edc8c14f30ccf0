"""The questionnaire as validated data: sections, questions, option lists and conditions."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from bot.yamlfile import DataFileError, load_yaml

logger = logging.getLogger(__name__)

QuestionType = Literal[
    "text", "long_text", "integer", "decimal", "money", "date", "year_month",
    "single_choice", "multi_choice", "yes_no", "country", "multi_country", "email", "url",
]
CHOICE_TYPES = frozenset({"single_choice", "multi_choice", "yes_no"})
MULTI_TYPES = frozenset({"multi_choice", "multi_country"})
YES_NO_CODES = ("YES", "NO")
OTHER_SUFFIX = "_other"

# What a question stands for, so that reports (export columns, statistics) find it without
# naming its id. Each role is held by at most one question; a questionnaire without a role
# simply gets no such column content or breakdown.
QuestionRole = Literal[
    "respondent_name",  # the respondent's name (export `respondent`)
    "organization",  # the organization's name (export `organization`)
    "org_type",  # single choice: type of organization (stats by organization type)
    "country",  # the respondent's country (export `country`, --country, stats by country)
    "activity_areas",  # multi choice in the repeated section: areas of each activity
    "need_areas",  # multi choice: areas of capacity-building need
    "top_needs",  # multi choice: the top needs among need_areas
]
# The type a question must have to hold a role, and whether it must be outside a repeated
# section (one value per report).
ROLE_TYPES: dict[str, tuple[frozenset[str], bool]] = {
    "respondent_name": (frozenset({"text"}), True),
    "organization": (frozenset({"text", "long_text"}), True),
    "org_type": (frozenset({"single_choice"}), True),
    "country": (frozenset({"country"}), True),
    "activity_areas": (frozenset({"multi_choice"}), False),
    "need_areas": (frozenset({"multi_choice"}), False),
    "top_needs": (frozenset({"multi_choice"}), False),
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Condition(_Strict):
    """A structured condition on earlier answers; exactly one operator besides `question`."""

    question: str | None = None
    equals: str | None = None
    not_equals: str | None = None
    in_: list[str] | None = Field(default=None, alias="in")
    not_in: list[str] | None = None
    any_of: list[str] | None = None
    count_gt: int | None = None
    answered: bool | None = None
    all: list[Condition] | None = None
    any: list[Condition] | None = None
    not_: Condition | None = Field(default=None, alias="not")

    @model_validator(mode="after")
    def _one_operator(self) -> Condition:
        ops = [name for name in ("equals", "not_equals", "in_", "not_in", "any_of", "count_gt",
                                 "answered") if getattr(self, name) is not None]
        groups = [name for name in ("all", "any", "not_") if getattr(self, name) is not None]
        if groups:
            if ops or self.question or len(groups) > 1:
                raise ValueError("a condition with all/any/not takes nothing else")
        elif not self.question or len(ops) != 1:
            raise ValueError("a condition needs `question` and exactly one operator "
                             "(equals, not_equals, in, not_in, any_of, count_gt, answered)")
        return self

    def questions(self) -> Iterator[str]:
        if self.question:
            yield self.question
        for sub in (self.all or []) + (self.any or []) + ([self.not_] if self.not_ else []):
            yield from sub.questions()

    def holds(self, value_of) -> bool:
        """Evaluate against `value_of(question_id)`; unanswered questions make tests false."""
        if self.all is not None:
            return all(c.holds(value_of) for c in self.all)
        if self.any is not None:
            return any(c.holds(value_of) for c in self.any)
        if self.not_ is not None:
            return not self.not_.holds(value_of)
        return self._leaf(value_of(self.question))

    def _leaf(self, value: Any) -> bool:
        if self.answered is not None:
            return (value is not None) == self.answered
        if value is None:
            return False
        values = value if isinstance(value, list) else [value]
        if self.equals is not None:
            return value == self.equals
        if self.not_equals is not None:
            return value != self.not_equals
        if self.in_ is not None:
            return any(v in self.in_ for v in values)
        if self.not_in is not None:
            return not any(v in self.not_in for v in values)
        if self.any_of is not None:
            return any(v in self.any_of for v in values)
        return len(values) > (self.count_gt or 0)


class OptionSpec(_Strict):
    code: str = Field(pattern=r"^[A-Z][A-Z0-9_]{0,31}$")
    free_text: bool = False
    bch_ref: str | None = None


class QuestionSpec(_Strict):
    id: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9_]{0,40}$")
    type: QuestionType
    required: bool = False
    required_if: Condition | None = None
    ask_if: Condition | None = None
    options: str | None = None
    options_from: str | None = None
    min: float | None = None
    max: float | None = None
    max_select: int | None = None
    max_words: int | None = None
    max_length: int | None = None
    not_before: str | None = None
    source: str | None = None
    role: QuestionRole | None = None


class RepeatSpec(_Strict):
    max: int = Field(ge=1, le=50)
    more_question: str


class SectionSpec(_Strict):
    id: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9_]{0,20}$")
    ask_if: Condition | None = None
    repeat: RepeatSpec | None = None
    questions: list[QuestionSpec] = Field(min_length=1)


class QuestionnaireSpec(_Strict):
    id: str = Field(pattern=r"^[a-z][a-z0-9_]{0,40}$")
    version: str
    default: bool = False
    config: dict[str, Any] = Field(default_factory=dict)
    code_lists: dict[str, list[OptionSpec | str]]
    sections: list[SectionSpec] = Field(min_length=1)

    @model_validator(mode="after")
    def _roles_once(self) -> QuestionnaireSpec:
        holders: dict[str, str] = {}
        for section in self.sections:
            for q in section.questions:
                if q.role is None:
                    continue
                if q.role in holders:
                    raise ValueError(f"role {q.role} is given to both question "
                                     f"{holders[q.role]} and question {q.id}")
                holders[q.role] = q.id
        return self


@dataclass(frozen=True, slots=True)
class Option:
    code: str
    free_text: bool = False
    bch_ref: str | None = None


@dataclass(frozen=True, slots=True)
class Question:
    id: str
    type: str
    section: str
    required: bool
    required_if: Condition | None
    ask_if: Condition | None
    option_list: str | None  # name of the code list (label lookup key)
    options: tuple[Option, ...]
    options_from: str | None
    min: float | None
    max: float | None
    max_select: int | None
    max_words: int | None
    max_length: int
    not_before: str | None
    repeated: bool
    other_of: str | None = None  # for generated "please specify" questions: the parent id
    source: str | None = None
    role: str | None = None  # QuestionRole

    @property
    def is_multi(self) -> bool:
        return self.type in MULTI_TYPES


@dataclass(frozen=True, slots=True)
class Section:
    id: str
    ask_if: Condition | None
    repeat_max: int  # 1 for plain sections
    more_question: str | None
    questions: tuple[Question, ...]


@dataclass(frozen=True)
class Questionnaire:
    id: str
    version: str
    default: bool
    config: Mapping[str, Any]
    code_lists: Mapping[str, tuple[Option, ...]]
    sections: tuple[Section, ...]
    path: str
    questions: dict[str, Question] = field(init=False, repr=False)
    sections_by_question: dict[str, Section] = field(init=False, repr=False)
    roles: dict[str, Question] = field(init=False, repr=False)  # role -> its question

    def __post_init__(self) -> None:
        # Frozen for safety; the indexes are derived once here.
        object.__setattr__(self, "questions",
                           {q.id: q for s in self.sections for q in s.questions})
        object.__setattr__(self, "sections_by_question",
                           {q.id: s for s in self.sections for q in s.questions})
        object.__setattr__(self, "roles", {q.role: q for q in self.questions.values()
                                           if q.role is not None})

    def question(self, qid: str) -> Question:
        return self.questions[qid]

    def by_role(self, role: str) -> Question | None:
        """The question holding `role` (a QuestionRole), or None if no question does."""
        return self.roles.get(role)


DEFAULT_MAX_LENGTH = {"text": 500, "long_text": 5000, "email": 254, "url": 2000}


def load_questionnaire(path: Path) -> Questionnaire:
    """Load and validate one questionnaire file; errors name the file, the id and the problem."""
    data = load_yaml(path)
    if not isinstance(data, dict):
        raise DataFileError(path, "expected a mapping at the top level")
    try:
        spec = QuestionnaireSpec.model_validate(data)
    except ValidationError as exc:
        raise DataFileError(path, _describe(exc, data)) from None
    return _build(spec, path)


def _describe(exc: ValidationError, data: dict) -> str:
    problems = []
    for err in exc.errors()[:5]:
        loc = err["loc"]
        where = _locate(data, loc)
        problems.append(f"{where}: {err['msg']}")
    return "; ".join(problems)


def _locate(data: Any, loc: tuple) -> str:
    """Turn a pydantic location into 'question A7_start, field ask_if' style text."""
    node, named = data, []
    for part in loc:
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            named.append(str(part))
            continue
        if isinstance(node, dict) and "id" in node and isinstance(part, int):
            kind = "question" if "type" in node else "section"
            named.append(f"{kind} {node['id']}")
        elif isinstance(part, str):
            named.append(part)
    return ", ".join(named) or "top level"


def _build(spec: QuestionnaireSpec, path: Path) -> Questionnaire:
    def fail(problem: str) -> DataFileError:
        return DataFileError(path, problem)

    code_lists: dict[str, tuple[Option, ...]] = {}
    for name, entries in spec.code_lists.items():
        opts = []
        for entry in entries:
            o = OptionSpec(code=entry) if isinstance(entry, str) else entry
            opts.append(Option(o.code, o.free_text, o.bch_ref))
        codes = [o.code for o in opts]
        dup = {c for c in codes if codes.count(c) > 1}
        if dup:
            raise fail(f"code list {name}: duplicate option code(s) {sorted(dup)}")
        if not opts:
            raise fail(f"code list {name}: empty")
        code_lists[name] = tuple(opts)

    seen: dict[str, str] = {}
    sections = []
    for s in spec.sections:
        if s.id in seen.values():
            raise fail(f"section {s.id}: duplicate section id")
        questions: list[Question] = []
        for qs in s.questions:
            if qs.id in seen:
                raise fail(f"question {qs.id}: duplicate question id")
            seen[qs.id] = s.id
            q = _build_question(qs, s, code_lists, fail)
            questions.append(q)
            free = [o.code for o in q.options if o.free_text]
            if free:  # a generated "please specify" question follows the parent
                other_id = qs.id + OTHER_SUFFIX
                if other_id in seen:
                    raise fail(f"question {other_id}: id reserved for 'please specify' answers")
                seen[other_id] = s.id
                questions.append(Question(
                    id=other_id, type="text", section=s.id, required=True, required_if=None,
                    ask_if=Condition(question=qs.id, any_of=free), option_list=None, options=(),
                    options_from=None, min=None, max=None, max_select=None, max_words=None,
                    max_length=DEFAULT_MAX_LENGTH["text"], not_before=None,
                    repeated=s.repeat is not None, other_of=qs.id))
        more = None
        if s.repeat:
            more = s.repeat.more_question
            last = questions[-1] if questions else None
            if not last or last.id != more or last.type != "yes_no":
                raise fail(f"section {s.id}: repeat.more_question {more} must be the section's "
                           "last question, of type yes_no")
        sections.append(Section(s.id, s.ask_if, s.repeat.max if s.repeat else 1, more,
                                tuple(questions)))

    order = {qid: i for i, qid in enumerate(seen)}
    for s in sections:
        conds = [(f"section {s.id}", s.ask_if)]
        for q in s.questions:
            conds += [(f"question {q.id}", q.ask_if), (f"question {q.id}", q.required_if)]
            if q.options_from and q.options_from not in seen:
                raise fail(f"question {q.id}: options_from {q.options_from} is not a question")
            if q.not_before and q.not_before not in seen:
                raise fail(f"question {q.id}: not_before {q.not_before} is not a question")
        for where, cond in conds:
            for ref in cond.questions() if cond else ():
                if ref not in seen:
                    raise fail(f"{where}: condition refers to unknown question {ref}")
                own = where.split()[-1]
                if own in order and order[ref] >= order[own]:
                    raise fail(f"{where}: condition refers to {ref}, which comes later")
    return Questionnaire(spec.id, spec.version, spec.default, dict(spec.config), code_lists,
                         tuple(sections), str(path))


def _build_question(qs: QuestionSpec, s: SectionSpec, code_lists, fail) -> Question:
    options: tuple[Option, ...] = ()
    if qs.type == "yes_no":
        options = (Option("YES"), Option("NO"))
    elif qs.type in ("single_choice", "multi_choice"):
        if qs.options:
            if qs.options not in code_lists:
                raise fail(f"question {qs.id}: unknown code list {qs.options}")
            options = code_lists[qs.options]
        elif not qs.options_from:
            raise fail(f"question {qs.id}: a choice question needs `options` or `options_from`")
    elif qs.options or qs.options_from:
        raise fail(f"question {qs.id}: type {qs.type} takes no options")
    if qs.role is not None:
        types, once = ROLE_TYPES[qs.role]
        if qs.type not in types:
            raise fail(f"question {qs.id}: role {qs.role} needs type "
                       f"{' or '.join(sorted(types))}, not {qs.type}")
        if once and s.repeat is not None:
            raise fail(f"question {qs.id}: role {qs.role} needs one answer per report, "
                       f"not a question of the repeated section {s.id}")
    return Question(
        id=qs.id, type=qs.type, section=s.id, required=qs.required, required_if=qs.required_if,
        ask_if=qs.ask_if, option_list=qs.options, options=options, options_from=qs.options_from,
        min=qs.min, max=qs.max, max_select=qs.max_select, max_words=qs.max_words,
        max_length=qs.max_length or DEFAULT_MAX_LENGTH.get(qs.type, 200),
        not_before=qs.not_before, repeated=s.repeat is not None, source=qs.source,
        role=qs.role)


def load_questionnaires(directory: Path) -> dict[str, Questionnaire]:
    """Load every *.yaml in `directory`; exactly one may be marked default."""
    if not directory.is_dir():
        raise DataFileError(directory, "questionnaire directory not found")
    found: dict[str, Questionnaire] = {}
    for path in sorted(directory.glob("*.yaml")):
        q = load_questionnaire(path)
        if q.id in found:
            raise DataFileError(path, f"questionnaire id {q.id} already defined in "
                                      f"{found[q.id].path}")
        found[q.id] = q
    if not found:
        raise DataFileError(directory, "no questionnaire (*.yaml) found")
    return found


def default_questionnaire(found: dict[str, Questionnaire], wanted: str | None) -> Questionnaire:
    if wanted:
        if wanted in found:
            return found[wanted]
        candidate = Path(wanted)
        if candidate.suffix in (".yaml", ".yml"):
            return load_questionnaire(candidate)
        raise DataFileError(wanted, f"unknown questionnaire; installed: {sorted(found)}")
    defaults = [q for q in found.values() if q.default]
    return defaults[0] if defaults else next(iter(found.values()))


# -- stable numbering ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Numbered:
    """One question with its stable number ("N." in the mail form)."""

    number: int
    question: Question
    section: Section
    section_index: int

    @property
    def repeated(self) -> bool:
        return self.section.repeat_max > 1


class Numbering:
    """Every question gets one number, in questionnaire order, whether or not it applies yet
    (so numbers never move between mails). The repeated section is numbered once: instance
    1 uses the plain numbers ("8"), instance k writes them "k.8". Generated "please specify"
    questions get their own number right after their parent."""

    def __init__(self, questionnaire: Questionnaire) -> None:
        self.items: list[Numbered] = []
        for s_index, section in enumerate(questionnaire.sections):
            for q in section.questions:
                self.items.append(Numbered(len(self.items) + 1, q, section, s_index))
        self.by_number = {n.number: n for n in self.items}
        self.by_qid = {n.question.id: n for n in self.items}
        self.repeated_numbers = frozenset(n.number for n in self.items if n.repeated)

    def label(self, qid: str, repeat: int | None) -> str:
        n = self.by_qid[qid].number
        return str(n) if not repeat else f"{repeat + 1}.{n}"

    def resolve(self, number: int, activity: int | None) -> tuple[Numbered, int | None] | None:
        """The question and repeat index a written number stands for (activity 1-based)."""
        found = self.by_number.get(number)
        if found is None:
            return None
        if not found.repeated:
            return (found, None) if activity is None else None
        repeat = (activity or 1) - 1
        return (found, repeat) if 0 <= repeat < found.section.repeat_max else None

    def resolve_label(self, label: str) -> tuple[Numbered, int | None] | None:
        """resolve() for a label as written: "8" or "2.8"."""
        head, _, tail = label.partition(".")
        try:
            return (self.resolve(int(tail), int(head)) if tail
                    else self.resolve(int(head), None))
        except ValueError:
            return None
