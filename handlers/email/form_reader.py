"""Reading an email reply into one form inbound: `N. answer` lines, command words, copied prompts.

A reply is read line by line: a line starting with a number and a separator (`8.` `8)`
`8:` `8 -` or CJK `8、` `8。` `8．` `8：`) opens an answer, the following lines continue it
until a blank line (only long answers use them). Lines that are exactly a command word
(the localized submit word, status, cancel, "language: fr", amend) are commands. "2.8." is
question 8 for Activity 2 (bot.questionnaire.Numbering). A line that repeats the form's
question before the answer ("1. What is your full name? * Maria") keeps only the answer,
whichever of the six languages the form was in. The result is the `entries` and `commands`
of `Inbound(kind="form")`; the engine applies them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bot.answers import clean_text
from bot.form_turn import SKIP
from bot.i18n import fold
from bot.questionnaire import Question
from bot.rules import Slot, slot_key

if TYPE_CHECKING:
    from .form_render import FormRenderer

# "8. answer", "8) answer", "8: answer", "8 - answer", "8、答案", "8。答案", "8．答案", "٨. نعم"
# (\d is any decimal digit: Arabic-Indic and full-width ones too).
# After . ) : a space, the end, or a letter ("1.张伟") must follow, so "3.5 ha" is no answer.
_SEP = r"(?:[.):](?=\s|$|[^\W\d_])|\s*[：．。、）]|\s*[-–—](?=\s|$))"
# At most two spaces of indent: the form indents its examples and hints by three, and some
# clients quote by indenting, so deeper lines are never answers.
_INDENT = r"^ {0,2}"
_PLAIN_LINE = re.compile(_INDENT + r"(\d{1,3})" + _SEP + r"\s*(.*)$")
# "2.8. answer" (activity 2, question 8); a bare space may follow "2.8".
_ACTIVITY_LINE = re.compile(_INDENT + r"(\d{1,2})\.(\d{1,3})(?:" + _SEP + r"|(?=\s|$))\s*(.*)$")
_DEEP_INDENT = re.compile(r"^(?: {3}|\t)")
_BIDI = re.compile("[\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufeff\u061c]")
_SKIP_WORDS = frozenset({"-", "–", "—", "--", "/skip", "skip"})
_MARKS = " \t*:：→>"  # around a copied question line: required mark, arrows, colons
_SUBJECT_PREFIX = re.compile(
    r"^\s*(?:(?:re|fw|fwd|aw|tr|rv|res|ответ|回复|回覆|答复|转发|رد|إعادة توجيه)\s*[:：]\s*)+",
    re.IGNORECASE)
_SUBJECT_TAG = re.compile(r"\[ref:[^\]]*\]", re.IGNORECASE)
_LANGUAGE_COMMAND = re.compile(r"^(\S+?)\s*(?:[:：=]\s*|\s+)(\S+)$|^(\S+?)\s*[:：=]?$")
_ENGLISH_LANGUAGE_NAMES = {"arabic": "ar", "english": "en", "spanish": "es", "french": "fr",
                           "russian": "ru", "chinese": "zh", "francais": "fr",
                           "espanol": "es", "russkii": "ru", "中文": "zh", "汉语": "zh"}


@dataclass(frozen=True, slots=True)
class RawAnswer:
    label: str  # as the respondent wrote it: "8", "2.8"
    number: int
    activity: int | None  # 1-based, when written "k.N"
    lines: tuple[str, ...]  # the text after the number, then continuation lines


@dataclass(frozen=True, slots=True)
class ReadReply:
    answers: tuple[RawAnswer, ...]
    commands: dict[str, str]  # submit/amend/status/cancel -> "", language -> code or ""


class FormReader:
    """Reads replies to one questionnaire's form; pure, holds only caches."""

    def __init__(self, renderer: FormRenderer) -> None:
        self.renderer = renderer
        self.qn, self.tr, self.numbering = renderer.qn, renderer.tr, renderer.numbering
        tr = self.tr
        words: dict[str, str] = {}
        for word, cmd in (("submit", "submit"), ("/submit", "submit"), ("amend", "amend"),
                          ("/amend", "amend"), ("status", "status"), ("/status", "status"),
                          ("/review", "status"), ("cancel", "cancel"), ("/cancel", "cancel")):
            words[word] = cmd
        for lang in tr.languages:
            for key, cmd in (("submit_word", "submit"), ("submit_button", "submit"),
                             ("amend_button", "amend"),
                             ("mail_word_status", "status"), ("mail_word_cancel", "cancel")):
                words.setdefault(fold(tr.raw(lang, key)), cmd)
        self._words = words
        self._language_words = {"language", "/language", "lang"} | {
            fold(tr.raw(lang, "mail_word_language")) for lang in tr.languages}
        names = dict(_ENGLISH_LANGUAGE_NAMES)
        for lang in tr.languages:
            names[lang] = lang
            names[fold(tr.language_name(lang))] = lang
        self._language_names = names
        self._optional_marks = tuple(dict.fromkeys(tr.t(lang, "mail_optional")
                                                   for lang in tr.languages))
        self._prompts: dict[tuple[str, int | None], tuple[str, ...]] = {}

    def entries(self, read: ReadReply) -> tuple[tuple[str, str], ...]:
        """The reply's answers as form entries: (number as written, answer text), the text
        "" for a question line left unanswered, SKIP for "-"."""
        out = []
        for item in read.answers:
            where = self.numbering.resolve(item.number, item.activity)
            if where is None:
                out.append((item.label, " ".join(item.lines)))
                continue
            numbered, rep = where
            out.append((item.label, self._answer_text(item, numbered.question, rep)))
        return tuple(out)

    def inbound_fields(self, text: str, subject: str = ""
                       ) -> tuple[tuple[tuple[str, str], ...], tuple[tuple[str, str], ...]]:
        """(entries, commands) of `Inbound(kind="form")` for a reply's own text."""
        read = self.read(text, subject)
        return self.entries(read), tuple(read.commands.items())

    def read(self, text: str, subject: str = "") -> ReadReply:
        """Answers and commands in a reply's own text (quotes already stripped)."""
        answers: list[RawAnswer] = []
        commands: dict[str, str] = {}
        current: list[str] | None = None
        opened: tuple[str, int, int | None] | None = None

        def close() -> None:
            nonlocal current, opened
            if opened is not None and current is not None:
                answers.append(RawAnswer(opened[0], opened[1], opened[2], tuple(current)))
            current, opened = None, None

        for raw_line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
            unindented = _BIDI.sub("", raw_line).replace("\u00a0", " ").rstrip()
            line = unindented.strip()
            if not line:
                close()
                continue
            found = self._answer_line(unindented)
            if found is not None:
                close()
                label, number, activity, rest = found
                opened, current = (label, number, activity), [rest]
                continue
            command = self._command(line)
            if command is not None:
                close()
                commands[command[0]] = command[1]
                continue
            if current is not None and not _DEEP_INDENT.match(unindented):
                current.append(line)  # the form's indented hints are never part of an answer
        close()
        if not answers and not commands and subject:
            command = self._command(bare_subject(subject))
            if command is not None:
                commands[command[0]] = command[1]
        return ReadReply(tuple(answers), commands)

    def _answer_line(self, line: str) -> tuple[str, int, int | None, str] | None:
        m = _ACTIVITY_LINE.match(line)
        if m:
            activity, number = int(m.group(1)), int(m.group(2))
            if number in self.numbering.repeated_numbers and activity >= 1:
                return f"{activity}.{number}", number, activity, m.group(3).strip()
        m = _PLAIN_LINE.match(line)
        if m:
            number = int(m.group(1))
            return str(number), number, None, m.group(2).strip()
        return None

    def _command(self, line: str) -> tuple[str, str] | None:
        # A command is a word, or "language: fr": prose lines are not worth folding.
        if len(line) > 60 or line.count(" ") > 3:
            return None
        word = fold(clean_text(line)).strip(" .!¡。！\"'«»“”")
        if not word:
            return None
        cmd = self._words.get(word)
        if cmd is not None:
            return cmd, ""
        m = _LANGUAGE_COMMAND.match(word)
        if not m:
            return None
        head = m.group(1) or m.group(3)
        if head.rstrip(":：=") not in self._language_words:
            return None
        arg = (m.group(2) or "").strip(" .!")
        return "language", self._language_names.get(arg, "") if arg else ""

    def _answer_text(self, item: RawAnswer, q: Question, rep: int | None) -> str:
        lines = [line for line in item.lines if line]
        if not lines:
            return ""
        first = self._without_prompt(lines[0], q, rep)
        if first is None:  # the form's question line copied: the answer may follow it
            lines = lines[1:]
        elif first != lines[0]:
            lines[0] = first
        if not lines:
            return ""
        # Only long answers span lines; after a short one come greetings, not this answer.
        text = "\n".join(lines) if q.type == "long_text" else lines[0]
        if len(text) < 8 and fold(text) in _SKIP_WORDS:
            return SKIP
        return text

    def _without_prompt(self, text: str, q: Question, rep: int | None) -> str | None:
        """The answer in a copied question line ("1. What is your name? * Maria" -> "Maria");
        None when the line is only the question; the text itself when it is no copy."""
        if len(text) < 8 and fold(text) in _SKIP_WORDS:
            return text
        prompts = self._folded_prompts(q, rep)
        # Folding never shrinks text by half: shorter answers cannot hold a copied prompt.
        prompts = [p for p in prompts if 2 * len(text) >= len(p)]
        folded = fold(text) if prompts else ""
        rest = None
        for prompt in prompts:
            if folded.startswith(prompt):
                rest = _strip_prefix(text, prompt)
                if rest is not None:
                    break
        if rest is None:
            return text
        rest = rest.strip(_MARKS)
        for optional in self._optional_marks:
            if rest.startswith(optional):
                rest = rest[len(optional):].strip(_MARKS)
                break
        if rest not in _SKIP_WORDS:
            rest = rest.strip(_MARKS + "-–—")  # "…name? - Maria"
        return rest or None

    def _folded_prompts(self, q: Question, rep: int | None) -> tuple[str, ...]:
        """The question line as the form prints it, in every language (folded, without
        bidi isolates: read() strips them from the reply's lines too). A "please specify"
        line names the option chosen, so each free-text option is tried, and all of them."""
        key = (q.id, rep if q.other_of else None)
        found = self._prompts.get(key)
        if found is None:
            prompts = []
            for lang in self.tr.languages:
                if not q.other_of:
                    prompts.append(self.tr.question_prompt(lang, self.qn, q))
                    continue
                slot = Slot(slot_key(q.id, rep), q, rep)
                free = [o.code for o in self.qn.questions[q.other_of].options if o.free_text]
                for chosen in [*([c] for c in free), free]:
                    answers = {slot_key(q.other_of, rep): chosen}
                    prompts.append(self.renderer.prompt(lang, slot, answers))
            found = self._prompts[key] = tuple(dict.fromkeys(
                fold(_BIDI.sub("", p)) for p in prompts))
        return found


def bare_subject(subject: str) -> str:
    """A subject without reply/forward prefixes ("Re: RE: Fwd:", "回复：", "رد:") and
    [ref:…] tags."""
    return " ".join(_SUBJECT_TAG.sub("", _SUBJECT_PREFIX.sub("", subject or "")).split())


def _strip_prefix(text: str, prefix: str) -> str | None:
    """text without a leading prefix given in folded form (case and accents ignored)."""
    if not prefix:
        return None
    for i in range(len(prefix) // 2, len(text) + 1):
        if fold(text[:i]) == prefix:
            return text[i:]
    return None


__all__ = ["FormReader", "RawAnswer", "ReadReply", "bare_subject"]
