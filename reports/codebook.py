"""codebook.csv: every column of the export files, and every code with its six labels."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from bot.countries import country_table
from bot.i18n import LANGUAGES
from bot.questionnaire import Question, Questionnaire
from reports.cells import safe_row

if TYPE_CHECKING:
    from reports.export import Column, Exporter

DATA_TABLES = ("submissions", "activities", "answers")
CODED_TYPES = frozenset({"single_choice", "multi_choice", "yes_no", "country", "multi_country"})

CODEBOOK_HEADER = ("file", "column", "question_id", "section", "type", "required", "ask_if",
                   "option_list", "code", *(f"label_{lang}" for lang in LANGUAGES), "bch_ref",
                   "description")

_META_DESCRIPTIONS = {
    "submission_id": "Internal id of this submission version; answers.csv and activities.csv "
                     "refer to it",
    "reference": "Reference number given to the respondent (stable across amendments)",
    "version": "Version of the report: 1, then +1 for each amendment (only the latest version "
               "matching --status is exported)",
    "questionnaire_version": "Version of the questionnaire file the report was started with",
    "respondent_id": "Internal id of the respondent (one person on one channel)",
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
    "answers.csv.channel": "Channel the answer came from: console, telegram or email (one report "
                           "can be answered on several: started on Telegram, finished by email)",
}


def meta_descriptions(qn: Questionnaire) -> dict[str, str]:
    """Descriptions of the meta columns; those filled from a question name it (its role)."""
    def answer_to(role: str) -> str | None:
        q = qn.by_role(role)
        return q.id if q is not None else None

    name, org, country = (answer_to("respondent_name"), answer_to("organization"),
                          answer_to("country"))
    missing = "empty: no question has the role"
    return {
        **_META_DESCRIPTIONS,
        "respondent": (f"Respondent's name (answer to {name}, else the channel's display name)"
                       if name else "Respondent's name (the channel's display name)"),
        "organization": f"Organization (answer to {org})" if org else
                        f"Organization ({missing} organization)",
        "country": "Country, ISO 3166-1 alpha-2 in lower case as in the BCH "
                   + (f"(answer to {country})" if country else f"({missing} country)"),
    }


class Codebook:
    """The rows of codebook.csv for the columns an Exporter writes."""

    def __init__(self, exporter: Exporter) -> None:
        self.ex = exporter
        self.qn = exporter.qn
        self.tr = exporter.tr
        self.lang = exporter.options.lang
        self.descriptions = meta_descriptions(exporter.qn)

    def rows(self) -> Iterator[list[Any]]:
        """Every column of the three data files, and under each coded question column every
        option code with its labels in the six languages (and the BCH GUID where known)."""
        for table in DATA_TABLES:
            file = f"{table}.csv"
            for col in self.ex.columns[table]:
                yield from self._column(file, col)

    def _column(self, file: str, col: Column) -> Iterator[list[Any]]:
        empty_labels = [""] * len(LANGUAGES)
        q = col.question
        if q is None:
            if col.role == "label":  # country_label
                desc = f"Country name in {self.lang}"
            else:
                desc = self.descriptions.get(f"{file}.{col.name}",
                                             self.descriptions.get(col.name, ""))
            yield safe_row([file, col.name, "", "", "", "", "", "", "", *empty_labels, "",
                            desc])
            return
        base = [file, col.name, q.id, q.section, q.type, _required(q), _ask_if(self.qn, q),
                self._list_name(q)]
        if col.role == "value":
            prompts = [self._prompt(lang, q) for lang in LANGUAGES]
            yield safe_row([*base, "", *prompts, "", _value_description(q)])
            yield from self._options(base, q)
        elif col.role == "currency":
            yield safe_row([*base, "", *empty_labels, "", f"ISO 4217 currency code of {q.id}"])
        elif col.role == "label":
            yield safe_row([*base, "", *empty_labels, "", f"Label of {q.id} in {self.lang}"])
        else:  # one --split-multi column
            option = col.option or ""
            labels = [self._option_label(lang, q, option) for lang in LANGUAGES]
            yield safe_row([*base, option, *labels, self._bch_ref(q, option),
                            f"1 if {option} was chosen for {q.id}, 0 if not, empty if "
                            "unanswered"])

    def _options(self, base: list[Any], q: Question) -> Iterator[list[Any]]:
        if q.type in ("country", "multi_country"):
            names = {lang: self._country_names(lang) for lang in LANGUAGES}
            for code in country_table().countries:
                yield safe_row([*base, code,
                                *(names[lang].get(code, "") for lang in LANGUAGES), "", ""])
        elif q.type in CODED_TYPES:
            for option in self.ex.option_codes(q):
                yield safe_row([*base, option,
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
