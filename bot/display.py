"""How answers, prompts, hints and progress read in a language (pure, shared by every channel)."""

from __future__ import annotations

from typing import Any

from bot.answers import AnswerError, length_limit
from bot.i18n import LANGUAGES, Translations, fold
from bot.questionnaire import Option, Question, Questionnaire
from bot.rules import Slot, value_getter


class Display:
    """Holds the questionnaire and catalogs; caches what is the same on every turn."""

    def __init__(self, questionnaire: Questionnaire, translations: Translations) -> None:
        self.qn = questionnaire
        self.tr = translations
        # question id -> (part, number in its part, questions in the part); "please specify"
        # questions share their parent's number.
        self._positions: dict[str, tuple[int, int, int]] = {}
        for part, sec in enumerate(questionnaire.sections, start=1):
            numbered = [q for q in sec.questions if not q.other_of]
            for number, q in enumerate(numbered, start=1):
                self._positions[q.id] = (part, number, len(numbered))
        self._label_cache: dict[tuple, tuple[tuple[str, str], ...]] = {}
        self._hint_cache: dict[tuple, tuple[str, ...]] = {}

    def display_value(self, lang: str, q: Question, value: Any) -> str:
        tr = self.tr
        if value is None:
            return tr.t(lang, "skipped_value")
        if q.type in ("single_choice", "yes_no"):
            return tr.option_label(lang, self.qn, q, value)
        # Option labels may hold commas ("电子学习、在线课程…"): the semicolon level joins them.
        if q.type == "multi_choice":
            return tr.raw(lang, "choice_list_sep").join(
                tr.option_label(lang, self.qn, q, c) for c in value)
        if q.type == "country":
            return tr.country_name(lang, value)
        if q.type == "multi_country":
            return tr.raw(lang, "mail_list_sep").join(tr.country_name(lang, c) for c in value)
        if q.type == "money":
            return f"{value['amount']} {value['currency']}"
        return str(value)

    def prompt_text(self, lang: str, slot: Slot, answers: dict[str, Any]) -> str:
        q = slot.question
        other_label = None
        if q.other_of:
            parent = self.qn.questions[q.other_of]
            value = value_getter(answers, slot.repeat)(q.other_of)
            free = [o.code for o in parent.options if o.free_text]
            chosen = [c for c in (value if isinstance(value, list) else [value]) if c in free]
            other_label = self.tr.option_label(lang, self.qn, parent, chosen[0] if chosen else
                                               free[0])
        return self.tr.question_prompt(lang, self.qn, q, other_label)

    def section_header(self, lang: str, slot: Slot) -> str:
        """"Section title", or "Section title · Activity 2" inside the repeated section."""
        title = self.tr.section_title(lang, self.qn, slot.question.section)
        if slot.repeat is not None:
            title += " · " + self.tr.t(lang, "activity_label", n=slot.repeat + 1)
        return title

    def progress(self, lang: str, slot: Slot) -> str:
        """Part and question number from the questionnaire's fixed layout, so that progress
        only moves forward when a condition opens more questions."""
        q = slot.question
        part, number, total = self._positions[q.other_of or q.id]
        return self.tr.t(lang, "progress", part=part, parts=len(self.qn.sections),
                         section=self.section_header(lang, slot), n=number, total=total)

    def labels(self, lang: str, q: Question,
               options: tuple[Option, ...]) -> tuple[tuple[str, str], ...]:
        key = (lang, q.id, options)
        found = self._label_cache.get(key)
        if found is None:
            found = self._label_cache[key] = tuple(
                (o.code, self.tr.option_label(lang, self.qn, q, o.code)) for o in options)
        return found

    def static_hints(self, lang: str, q: Question, required: bool) -> tuple[str, ...]:
        """Prompt (except 'please specify') and hints: the same on every asking, so cached."""
        key = (lang, q.id, required)
        found = self._hint_cache.get(key)
        if found is not None:
            return found
        parts = [] if q.other_of else [self.tr.question_prompt(lang, self.qn, q)]
        parts += self.answer_hints(lang, q)
        if not required:
            parts.append(self.tr.t(lang, "optional_hint"))
        found = self._hint_cache[key] = tuple(parts)
        return found

    def answer_hints(self, lang: str, q: Question, format_hint: str | None = None) -> list[str]:
        """The question's hint and what a valid answer looks like (shared with the mail form)."""
        hints = []
        hint = self.tr.question_hint(lang, self.qn, q)
        if hint:
            hints.append(hint)
        hints.append(format_hint or self.format_hint(lang, q))
        if q.max_select and q.is_multi:
            hints.append(self.tr.tn(lang, "max_select_hint", q.max_select))
        if q.max_words:
            hints.append(self.tr.tn(lang, "word_limit_hint", length_limit(q.max_words, lang)))
        return hints

    def format_hint(self, lang: str, q: Question) -> str:
        key = {"single_choice": "hint_single", "multi_choice": "hint_multi"}.get(
            q.type, f"hint_{q.type}")
        return self.tr.t(lang, key)

    def error_text(self, lang: str, err: AnswerError) -> str:
        """The localized explanation of a refused answer; plural catalogs get the count."""
        if err.count is not None and isinstance(self.tr.raw(lang, err.key), dict):
            return self.tr.tn(lang, err.key, err.count, **err.values)
        if err.count is not None:
            return self.tr.t(lang, err.key, count=err.count, **err.values)
        return self.tr.t(lang, err.key, **err.values)


def language_aliases(translations: Translations) -> dict[str, str]:
    """Folded names a respondent may type for a language ("français", "russian", "中文")."""
    names = {lang: lang for lang in LANGUAGES}
    for lang in translations.languages:
        names[fold(translations.language_name(lang))] = lang
    for name, lang in (("arabic", "ar"), ("english", "en"), ("spanish", "es"),
                       ("french", "fr"), ("russian", "ru"), ("chinese", "zh"),
                       ("francais", "fr"), ("espanol", "es"), ("russkii", "ru"),
                       ("русский", "ru"), ("中文", "zh"), ("汉语", "zh"), ("عربي", "ar")):
        names.setdefault(fold(name), lang)
    return names


__all__ = ["Display", "language_aliases"]
