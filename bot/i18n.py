"""Message catalogs for the six UN languages: lookup, plurals, country names, bidi isolation."""

from __future__ import annotations

import json
import logging
import re
import string
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from babel import Locale
from babel.dates import format_date

from bot.countries import country_table
from bot.questionnaire import Question, Questionnaire
from bot.yamlfile import DataFileError, load_yaml

logger = logging.getLogger(__name__)

LANGUAGES = ("ar", "en", "es", "fr", "ru", "zh")
SOURCE_LANGUAGE = "en"
RTL_LANGUAGES = frozenset({"ar"})
# Catalogs that belong to no questionnaire: the conversation's own words, the invitation
# emails of a reporting round, its reminders.
UI_DOMAINS = ("ui", "invite", "remind")
# First-strong isolate: embedded codes, numbers and Latin names keep their own direction
# inside Arabic sentences instead of reordering the text around them.
FSI, PDI = "\u2068", "\u2069"
LRI, RLM = "\u2066", "\u200f"
# Left-to-right material written in RTL catalogs: URLs (without a sentence's final stop),
# e-mail addresses, slash commands, date masks and ISO dates. Isolated as LRI…PDI at load.
_LTR_RUN = re.compile(
    r"https?://[^\s«»()]*[^\s«»().،,]"
    r"|[\w.+-]+@[\w-]+(?:\.[\w-]+)+"
    r"|(?<![\w/])/[a-z_]+\b"
    r"|\bYYYY-MM(?:-DD)?\b"
    r"|(?<![\d-])\d{4}-\d{2}(?:-\d{2})?(?![\d-])")
_TAG_RE = re.compile(r"<[^>]+>")
_FORMATTER = string.Formatter()


def placeholders(text: str) -> set[str]:
    try:
        return {name for _, name, _, _ in _FORMATTER.parse(text) if name is not None}
    except ValueError as exc:
        raise ValueError(f"bad placeholder syntax: {exc}") from None


def plural_categories(lang: str) -> set[str]:
    return set(Locale.parse(lang).plural_form.tags) | {"other"}


def _flatten(prefix: str, node: Any, out: dict[str, Any]) -> None:
    """Flatten nested mappings to dotted keys; plural mappings stay whole."""
    if isinstance(node, dict) and node and set(node) <= {"zero", "one", "two", "few", "many",
                                                          "other"}:
        out[prefix] = {k: str(v) for k, v in node.items()}
    elif isinstance(node, dict):
        for key, value in node.items():
            _flatten(f"{prefix}.{key}" if prefix else str(key), value, out)
    else:
        out[prefix] = node


@dataclass(frozen=True, slots=True)
class Catalog:
    """All strings of one domain (ui, or one questionnaire) in one language, dotted keys."""

    language: str
    domain: str
    messages: dict[str, Any]
    path: str


class Translations:
    """Loads, merges and checks every catalog; the only place that knows where texts live."""

    def __init__(self, locales_dir: Path, questionnaires: Iterable[Questionnaire],
                 languages: Iterable[str] = LANGUAGES) -> None:
        self.locales_dir = locales_dir
        self.languages = tuple(languages)
        self._catalogs: dict[tuple[str, str], Catalog] = {}
        self._plural = {lang: Locale.parse(lang).plural_form for lang in self.languages}
        official = self._load_glossary()
        questionnaires = list(questionnaires)
        domains = [*UI_DOMAINS, *(q.id for q in questionnaires)]
        for lang in self.languages:
            for domain in domains:
                path = locales_dir / lang / f"{domain}.yaml"
                data = load_yaml(path)
                if not isinstance(data, dict):
                    raise DataFileError(path, "expected a mapping of message keys")
                flat: dict[str, Any] = {}
                _flatten("", data, flat)
                for key, text in official.get(domain, {}).items():
                    if key in flat:
                        raise DataFileError(path, f"key {key} is official wording taken from "
                                                  "glossary.json; remove it from this file")
                    flat[key] = text[lang]
                if lang in RTL_LANGUAGES:
                    flat = {k: _isolate_ltr_runs(v) for k, v in flat.items()}
                self._catalogs[(lang, domain)] = Catalog(lang, domain, flat, str(path))
        self._check(questionnaires)

    def _load_glossary(self) -> dict[str, dict[str, dict[str, str]]]:
        map_path = self.locales_dir / "glossary_map.yaml"
        glossary_path = self.locales_dir / "glossary.json"
        mapping = load_yaml(map_path) or {}
        try:
            glossary = json.loads(glossary_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise DataFileError(glossary_path, f"cannot read: {exc}") from None
        out: dict[str, dict[str, dict[str, str]]] = {}
        for domain, keys in mapping.items():
            for key, ref in keys.items():
                node: Any = glossary
                for part in ref.split("."):
                    node = node.get(part) if isinstance(node, dict) else None
                if not isinstance(node, dict) or any(lang not in node for lang in LANGUAGES):
                    raise DataFileError(map_path, f"{domain}: {key} -> {ref} not in glossary")
                # Tags and doubled spaces are layout in the BCH forms, not wording.
                out.setdefault(domain, {})[key] = {
                    lang: " ".join(_TAG_RE.sub("", node[lang]).split()) for lang in LANGUAGES}
        return out

    def _check(self, questionnaires: Iterable[Questionnaire]) -> None:
        """Every key of the English catalogs exists everywhere, with the same placeholders."""
        for (lang, domain), catalog in self._catalogs.items():
            source = self._catalogs[(SOURCE_LANGUAGE, domain)]
            problems = []
            for key, text in source.messages.items():
                if key not in catalog.messages:
                    problems.append(f"missing key {key}")
                    continue
                problems += self._check_message(lang, key, text, catalog.messages[key])
            extra = set(catalog.messages) - set(source.messages)
            if extra:
                problems.append(f"keys not in the English catalog: {sorted(extra)[:5]}")
            if problems:
                raise DataFileError(catalog.path, "; ".join(problems[:8]))
        for q in questionnaires:
            needed = [f"sections.{s.id}" for s in q.sections] + ["title"]
            for question in q.questions.values():
                if not question.other_of:
                    needed.append(f"questions.{question.id}.prompt")
                if question.option_list and question.type != "yes_no":
                    needed += [f"options.{question.option_list}.{o.code}"
                               for o in question.options]
            en = self._catalogs[(SOURCE_LANGUAGE, q.id)]
            missing = [k for k in needed if k not in en.messages]
            if missing:
                raise DataFileError(en.path, f"missing texts for {missing[:8]}")

    def _check_message(self, lang: str, key: str, source: Any, text: Any) -> list[str]:
        if isinstance(source, dict):
            if not isinstance(text, dict):
                return [f"{key}: must be a plural mapping"]
            wanted = plural_categories(lang)
            if set(text) != wanted:
                return [f"{key}: plural categories {sorted(text)} but {lang} needs "
                        f"{sorted(wanted)}"]
            want = placeholders(source["other"])
            return [f"{key}[{cat}]: placeholders {sorted(placeholders(v))} differ from "
                    f"English {sorted(want)}" for cat, v in text.items()
                    if placeholders(v) - want or (cat == "other" and placeholders(v) != want)]
        if not isinstance(text, str) or not text.strip():
            return [f"{key}: empty"]
        if placeholders(text) != placeholders(str(source)):
            return [f"{key}: placeholders {sorted(placeholders(text))} differ from English "
                    f"{sorted(placeholders(str(source)))}"]
        return []

    # -- lookup -------------------------------------------------------------------------------

    def raw(self, lang: str, key: str, domain: str = "ui") -> Any:
        return self._catalogs[(lang, domain)].messages[key]

    def has(self, lang: str, key: str, domain: str = "ui") -> bool:
        return key in self._catalogs[(lang, domain)].messages

    def t(self, lang: str, key: str, domain: str = "ui", **values: Any) -> str:
        return self._format(lang, self.raw(lang, key, domain), values)

    def tn(self, lang: str, key: str, count: int, domain: str = "ui", **values: Any) -> str:
        forms = self.raw(lang, key, domain)
        category = self._plural[lang](abs(count))
        return self._format(lang, forms.get(category, forms["other"]), {"count": count, **values})

    def _format(self, lang: str, text: str, values: dict[str, Any]) -> str:
        if not values:
            return text
        if lang in RTL_LANGUAGES:
            # Arabic values stay bare: isolating them would leave a line (the mail subject)
            # with no strong character outside an isolate, and so left-to-right.
            values = {k: v if _has_rtl(str(v)) else f"{FSI}{v}{PDI}"
                      for k, v in values.items()}
        return text.format(**values)

    def ltr(self, lang: str, text: str) -> str:
        """`text` (a reference, an "N." example) kept left-to-right inside an RTL line."""
        return f"{LRI}{text}{PDI}" if lang in RTL_LANGUAGES else text

    def line_start(self, lang: str) -> str:
        """Mark opening a line whose first character is neutral, so the line stays RTL."""
        return RLM if lang in RTL_LANGUAGES else ""

    def language_name(self, lang: str) -> str:
        return self.raw(lang, "language_name")

    # -- questionnaire texts ------------------------------------------------------------------

    def question_prompt(self, lang: str, qn: Questionnaire, question: Question,
                        other_label: str | None = None) -> str:
        if question.other_of:
            return self.t(lang, "specify_other", option=other_label or "")
        return self.t(lang, f"questions.{question.id}.prompt", qn.id, **qn.config)

    def question_hint(self, lang: str, qn: Questionnaire, question: Question) -> str | None:
        key = f"questions.{question.id}.hint"
        if question.other_of or not self.has(lang, key, qn.id):
            return None
        return self.t(lang, key, qn.id, **qn.config)

    def section_title(self, lang: str, qn: Questionnaire, section_id: str) -> str:
        return self.raw(lang, f"sections.{section_id}", qn.id)

    def option_label(self, lang: str, qn: Questionnaire, question: Question, code: str) -> str:
        if question.type == "yes_no":
            return self.raw(lang, "yes" if code == "YES" else "no")
        list_name = question.option_list
        if list_name is None and question.options_from:
            list_name = qn.questions[question.options_from].option_list
        return self.raw(lang, f"options.{list_name}.{code}", qn.id)

    # -- countries ----------------------------------------------------------------------------

    def country_names(self, lang: str) -> dict[str, str]:
        """alpha-2 (lower case, as the BCH stores it) -> UNTERM short name in `lang`."""
        return country_table().names(lang)

    def country_name(self, lang: str, alpha2: str) -> str:
        return country_table().name(lang, alpha2)


def _has_rtl(text: str) -> bool:
    return any(unicodedata.bidirectional(ch) in ("R", "AL") for ch in text)


def _isolate_ltr_runs(message: Any) -> Any:
    if isinstance(message, dict):
        return {k: _isolate_ltr_runs(v) for k, v in message.items()}
    if not isinstance(message, str):
        return message
    text = _LTR_RUN.sub(lambda m: f"{LRI}{m.group(0)}{PDI}", message)
    # A line opening with an isolated command ("/back – …") stays a right-to-left line.
    return "\n".join(RLM + line if line.startswith(LRI) else line for line in text.split("\n"))


def fold(text: str) -> str:
    """Case- and accent-insensitive form used to match typed labels."""
    text = unicodedata.normalize("NFKD", text.casefold())
    text = "".join(ch for ch in text if not unicodedata.combining(ch))
    return " ".join(text.replace("’", "'").split())


# UN editorial style where Babel's CLDR long format differs: day-month-year in English,
# "1er" in French, "года" spelled out in Russian, and the Arabic double month names of UN
# documents (Levantine/Egyptian, as in "1 تشرين الأول/أكتوبر 2027").
_UN_ARABIC_MONTHS = (
    "كانون الثاني/يناير", "شباط/فبراير", "آذار/مارس", "نيسان/أبريل", "أيار/مايو",
    "حزيران/يونيه", "تموز/يوليه", "آب/أغسطس", "أيلول/سبتمبر", "تشرين الأول/أكتوبر",
    "تشرين الثاني/نوفمبر", "كانون الأول/ديسمبر",
)  # fmt: skip


def long_date(day: date, lang: str) -> str:
    """A date as UN documents in that language write it: "1 October 2027", "1er octobre 2027"."""
    if lang == "ar":
        return f"{day.day} {_UN_ARABIC_MONTHS[day.month - 1]} {day.year}"
    text = format_date(day, format="long", locale="en_GB" if lang == "en" else lang)
    if lang == "fr" and day.day == 1:
        text = "1er" + text[1:]
    elif lang == "ru":
        text = re.sub(r"\s*г\.$", " года", text)  # CLDR: "2027\u202fг."
    return text
