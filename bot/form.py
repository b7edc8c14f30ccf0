"""The questionnaire as one email form: numbering, rendering, reading `N. answer` replies (pure).

Numbering: every question of the questionnaire gets one number, in questionnaire order,
whether or not it applies yet (so numbers never move between mails). The repeated section
(activities) is numbered once; Activity 1 uses the plain numbers ("8."), Activity k writes
them with its number in front ("2.8." is question 8 for Activity 2; "1.8." also works).
Generated "please specify" questions get their own number right after their parent.

A reply is read line by line: a line starting with a number and a separator (`8.` `8)`
`8:` `8 -` or CJK `8、` `8。` `8．` `8：`) opens an answer, the following lines continue it
until a blank line (only long answers use them). Lines that are exactly a command word
(the localized submit word, status, cancel, "language: fr", amend) are commands.

`MailForm.handle` is a pure state transition with the engine's state and events
("answer", "answer_removed", "submitted", ...), so the service persists email turns exactly
like chat turns; it returns documents (`Doc`) that handlers/email/render.py turns into mail.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from bot.answers import AnswerError, clean_text
from bot.engine import Engine, Slot, Turn, slot_key
from bot.i18n import fold
from bot.language import Detection, resolve_language
from bot.questionnaire import Condition, Question, Section

logger = logging.getLogger(__name__)

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


# -- documents -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Para:
    text: str
    style: str = ""  # "" | "note" (smaller) | "strong" (stands out)


@dataclass(frozen=True, slots=True)
class Heading:
    text: str
    level: int = 2  # 1 title, 2 section, 3 activity block


@dataclass(frozen=True, slots=True)
class Field:
    """One question of the form, ready to print."""

    label: str  # "8" or "2.8"
    prompt: str
    mark: str  # "*" (required), a localized "(optional)", or ""
    notes: tuple[str, ...]  # condition, hint, format, limits
    options: tuple[tuple[str, str], ...] = ()  # (number, label)
    current: str | None = None  # "Current answer: …"


@dataclass(frozen=True, slots=True)
class Entry:
    """One line of a digest: a recorded answer, or one that was not accepted and why."""

    label: str
    prompt: str
    value: str
    note: str = ""


@dataclass(frozen=True, slots=True)
class Example:
    lines: tuple[str, ...]  # typed the way the respondent should type them


Block = Para | Heading | Field | Entry | Example


@dataclass(slots=True)
class Doc:
    """One outgoing mail, channel-neutral: render.py makes text and HTML of it."""

    kind: str  # form | digest | review | receipt | notice | verify
    language: str
    subject: str
    blocks: list[Block] = field(default_factory=list)
    footer: str = ""


@dataclass(slots=True)
class MailOut:
    doc: Doc
    to: str | None = None  # None: the turn's respondent; else another address (a delegate)
    reply: bool = True  # answers the inbound mail (threading headers, "Re:" subject)


@dataclass(slots=True)
class MailTurn:
    turn: Turn
    mails: list[MailOut] = field(default_factory=list)


# -- reading a reply -------------------------------------------------------------------------


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


@dataclass(frozen=True, slots=True)
class FormQuestion:
    number: int
    question: Question
    section: Section
    section_index: int
    position: int

    @property
    def repeated(self) -> bool:
        return self.section.repeat_max > 1


class Layout:
    """The stable numbering of a questionnaire's questions."""

    def __init__(self, sections: Iterable[Section]) -> None:
        self.items: list[FormQuestion] = []
        for s_index, section in enumerate(sections):
            for q in section.questions:
                n = len(self.items) + 1
                self.items.append(FormQuestion(n, q, section, s_index, n))
        self.by_number = {fq.number: fq for fq in self.items}
        self.by_qid = {fq.question.id: fq for fq in self.items}
        self.repeated_numbers = frozenset(fq.number for fq in self.items if fq.repeated)

    def label(self, qid: str, repeat: int | None) -> str:
        n = self.by_qid[qid].number
        return str(n) if not repeat else f"{repeat + 1}.{n}"

    def resolve(self, number: int, activity: int | None) -> tuple[FormQuestion, int | None] | None:
        fq = self.by_number.get(number)
        if fq is None:
            return None
        if not fq.repeated:
            return (fq, None) if activity is None else None
        repeat = (activity or 1) - 1
        return (fq, repeat) if 0 <= repeat < fq.section.repeat_max else None


# -- the form --------------------------------------------------------------------------------


class MailForm:
    """The email conversation for one questionnaire: pure, holds only caches."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.qn = engine.qn
        self.tr = engine.tr
        self.layout = Layout(self.qn.sections)
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
        self._field_cache: dict[tuple, Field] = {}
        self._static_cache: dict[tuple, Any] = {}

    # -- reading -----------------------------------------------------------------------------

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
            if number in self.layout.repeated_numbers and activity >= 1:
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

    # -- the turn ----------------------------------------------------------------------------

    def handle(self, state: dict[str, Any], text: str, now: datetime,
               detection: Detection | None = None, *, hint: str | None = None,
               subject: str = "", delegate: str | None = None) -> MailTurn:
        """One inbound mail: new state, events (as the engine emits them), outgoing docs."""
        st = {**state, "answers": dict(state["answers"]), "pending": []}
        mt = MailTurn(Turn(st))
        read = self.read(text, subject)
        commands = dict(read.commands)
        notes: list[Block] = []
        first = st["phase"] in ("new", "language")
        unsure = self._start(mt.turn, detection, hint) if first else False
        if delegate:
            mt.turn.events.append({"type": "delegate", "address": delegate, "ref": st["ref"]})
            owner_only = [c for c in ("submit", "cancel", "language", "amend") if c in commands]
            for c in owner_only:
                del commands[c]
            if owner_only:
                notes.append(Para(self._t(st, "mail_delegate_owner_only"), "note"))
        if "language" in commands:
            code = commands.pop("language")
            if code in self.tr.languages:
                st["lang"], st["lang_explicit"] = code, True
                mt.turn.events.append({"type": "language", "language": code, "explicit": True})
                notes.append(Para(self._t(st, "mail_language_set",
                                          language=self.tr.language_name(code))))
                commands.setdefault("status", "")
            else:
                commands.setdefault("status", "")
                unsure = True
        lang = st["lang"]
        if st["phase"] == "cancelled" and commands.keys() != {"cancel"}:
            st["phase"], st["resume"] = st.get("resume") or "asking", None
            mt.turn.events.append({"type": "resumed"})
            notes.append(Para(self._t(st, "welcome_back")))
        if st["phase"] == "cancelled":  # "cancel" again: still paused
            mt.mails.append(MailOut(self._notice(st, "mail_cancelled",
                                                 word=self._status_word(lang)), to=delegate))
            return mt
        if st["phase"] == "done":
            if "amend" not in commands:
                mt.mails.append(MailOut(self._notice(st, "mail_already_submitted",
                                                     ref=st["ref"],
                                                     word=self._amend_word(lang)), to=delegate))
                return mt
            st["version"] += 1
            st["phase"], st["slot"], st["submitted_at"] = "review", None, None
            mt.turn.events.append({"type": "amend", "ref": st["ref"], "version": st["version"]})
            notes.append(Para(self._t(st, "amend_started", ref=st["ref"],
                                      version=st["version"])))
        recorded, rejected = self._apply(mt.turn, read.answers)
        missing, optional_left = self._missing(st["answers"])
        complete = not missing
        if st["phase"] in ("asking", "review"):
            st["phase"] = "review" if complete else "asking"
            st["slot"] = missing[0].key if missing else None
        if "cancel" in commands and st["phase"] in ("asking", "review"):
            st["phase"], st["resume"] = "cancelled", st["phase"]
            mt.turn.events.append({"type": "cancelled"})
            doc = self._notice(st, "mail_cancelled", word=self._status_word(lang))
            if recorded or rejected:
                doc.blocks[:0] = self._results(st, recorded, rejected)
            mt.mails.append(MailOut(doc))
            return mt
        if "submit" in commands:
            if complete and not rejected:
                mt.mails.append(MailOut(self._submit(mt.turn, now)))
                return mt
            notes.append(Para(self._t(st, "mail_not_sent_errors" if rejected
                                      else "mail_not_sent_missing"), "strong"))
        if (first and not read.answers) or "status" in commands:
            if complete and st["phase"] == "review":
                notes.append(Para(self._t(st, "mail_complete",
                                          word=self.tr.raw(st["lang"], "submit_word")), "strong"))
            doc = self.form_doc(st, notes=notes, offer_languages=first or unsure,
                                offers_first=unsure)
        else:
            doc = self._digest(st, notes, recorded, rejected, missing, optional_left,
                               found_nothing=not read.answers and not commands,
                               offer_languages=first)
        if delegate:
            doc.blocks.insert(0, Para(self._t(st, "mail_delegate_ack", ref=st["ref"])))
            mt.mails.append(MailOut(doc, to=delegate))
            if recorded or rejected:
                notice = self._digest(st, [Para(self._t(st, "mail_delegate_notice",
                                                        address=delegate, ref=st["ref"]))],
                                      recorded, rejected, missing, optional_left,
                                      found_nothing=False)
                mt.mails.append(MailOut(notice, reply=False))
        else:
            mt.mails.append(MailOut(doc))
        return mt

    def _start(self, turn: Turn, detection: Detection | None, hint: str | None) -> bool:
        """First contact: pick the language (stored, else detection, else hint), start."""
        st = turn.state
        unsure = False
        if not st["lang"]:
            lang, unsure = resolve_language(stored=None, explicit=False, hint=hint,
                                            detection=detection)
            lang = lang if lang in self.tr.languages else "en"
            st["lang"], st["lang_explicit"] = lang, False
            turn.events.append({"type": "language", "language": lang, "explicit": False})
        st["phase"], st["slot"] = "asking", None
        turn.events.append({"type": "started", "language": st["lang"]})
        return unsure

    # -- applying answers ----------------------------------------------------------------------

    def _apply(self, turn: Turn, raw: tuple[RawAnswer, ...]
               ) -> tuple[list[Entry], list[Entry]]:
        st = turn.state
        lang, answers = st["lang"], st["answers"]
        recorded: list[Entry] = []
        rejected: list[Entry] = []
        latest: dict[str, tuple[RawAnswer, FormQuestion, int | None]] = {}
        for item in raw:
            where = self.layout.resolve(item.number, item.activity)
            if where is None:
                rejected.append(Entry(item.label, "", _shorten(" ".join(item.lines)),
                                      self._t(st, "mail_no_question", n=item.label)))
                continue
            fq, rep = where
            latest.pop(slot_key(fq.question.id, rep), None)  # the last one written wins
            latest[slot_key(fq.question.id, rep)] = (item, fq, rep)
        ordered = sorted(latest.items(), key=lambda kv: (kv[1][1].section_index,
                                                         kv[1][2] or 0, kv[1][1].position))
        for key, (item, fq, rep) in ordered:
            q = fq.question
            slot = Slot(key, q, rep)
            text = self._answer_text(st, item, slot)
            if text is None:  # the respondent left the form's question line unanswered
                continue
            section_off = fq.section.ask_if is not None and self._tri(
                fq.section.ask_if, None, answers, {}) is False
            if rep and (section_off or not self._open_block(turn, fq.section, rep, recorded)):
                rejected.append(self._rejection(st, slot, text, "mail_not_applicable"))
                continue
            if self._applies(fq, rep, answers, {}) is False:
                rejected.append(self._rejection(st, slot, text, "mail_not_applicable"))
                continue
            try:
                value = self._parse(st, slot, text)
            except AnswerError as err:
                turn.events.append({"type": "invalid", "slot": key, "reason": err.key})
                rejected.append(Entry(self.layout.label(q.id, rep), self._prompt(lang, slot,
                                                                                  answers),
                                      _shorten(text), self.engine.error_text(lang, err)))
                continue
            previous = answers.get(key, _UNSET)
            note = ""
            if previous is not _UNSET and previous != value:
                note = self._t(st, "mail_changed",
                               value=self.engine.display_value(lang, q, previous))
            if previous != value:
                self._record(turn, slot, value)
            recorded.append(Entry(self.layout.label(q.id, rep), self._prompt(lang, slot, answers),
                                  self.engine.display_value(lang, q, value), note))
        return recorded, rejected

    def _answer_text(self, st: dict, item: RawAnswer, slot: Slot) -> str | None:
        lines = [line for line in item.lines if line]
        if not lines:
            return None
        first = self._without_prompt(st, lines[0], slot)
        if first is None:  # the form's question line copied: the answer may follow it
            lines = lines[1:]
        elif first != lines[0]:
            lines[0] = first
        if not lines:
            return None
        # Only long answers span lines; after a short one come greetings, not this answer.
        text = "\n".join(lines) if slot.question.type == "long_text" else lines[0]
        return text or None

    def _without_prompt(self, st: dict, text: str, slot: Slot) -> str | None:
        """The answer in a copied question line ("1. What is your name? * Maria" -> "Maria");
        None when the line is only the question; the text itself when it is no copy."""
        q = slot.question
        if len(text) < 8 and fold(text) in _SKIP_WORDS:
            return text
        prompts = [self._folded_prompt(lang, q) for lang in dict.fromkeys((st["lang"], "en"))
                   ] if not q.other_of else [
            fold(_BIDI.sub("", self._prompt(st["lang"], slot, st["answers"])))]
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
        optional = self._t(st, "mail_optional")
        if rest.startswith(optional):
            rest = rest[len(optional):].strip(_MARKS)
        if rest not in _SKIP_WORDS:
            rest = rest.strip(_MARKS + "-–—")  # "…name? - Maria"
        return rest or None

    def _folded_prompt(self, lang: str, q: Question) -> str:
        key = ("prompt", lang, q.id)
        found = self._static_cache.get(key)
        if found is None:
            # Without bidi isolates: read() strips them from the reply's lines too.
            found = self._static_cache[key] = fold(_BIDI.sub(
                "", self.tr.question_prompt(lang, self.qn, q)))
        return found

    def _open_block(self, turn: Turn, section: Section, rep: int,
                    recorded: list[Entry]) -> bool:
        """Answers for Activity k+1 say "yes, another activity": open the blocks up to it."""
        answers = turn.state["answers"]
        more = section.more_question
        if more is None:
            return False
        keys = [slot_key(more, j) for j in range(rep)]
        if any(answers.get(k) not in (None, "YES") for k in keys):
            return False  # "No, no other activity" was answered
        for j, key in enumerate(keys):
            if answers.get(key) != "YES":
                slot = Slot(key, self.qn.questions[more], j)
                self._record(turn, slot, "YES")
                recorded.append(Entry(self.layout.label(more, j),
                                      self._prompt(turn.state["lang"], slot, answers),
                                      self.engine.display_value(turn.state["lang"], slot.question,
                                                                "YES")))
        return True

    def _parse(self, st: dict, slot: Slot, text: str) -> Any:
        q = slot.question
        answers = st["answers"]
        if len(text) < 8 and fold(text) in _SKIP_WORDS:
            if self.engine.is_required(slot, answers):
                raise AnswerError("error_required")
            return None
        options = q.options
        if q.options_from:  # numbers and names of the full list: they do not move
            options = self.qn.questions[q.options_from].options
        value = self.engine.parser.parse(self.qn, q, text, st["lang"], options,
                                         _getter(answers, slot.repeat))
        if q.options_from:
            allowed = _getter(answers, slot.repeat)(q.options_from) or []
            outside = [c for c in value if c not in allowed]
            if outside:
                label = self.tr.option_label(st["lang"], self.qn, q, outside[0])
                raise AnswerError("mail_error_not_chosen", text=label,
                                  n=self.layout.label(q.options_from, slot.repeat))
        if isinstance(value, list) and q.type == "multi_choice":
            order = {o.code: i for i, o in enumerate(options)}
            value = sorted(value, key=lambda c: order.get(c, 99))
        return value

    def _record(self, turn: Turn, slot: Slot, value: Any) -> None:
        turn.state["answers"][slot.key] = value
        turn.events.append({"type": "answer", "slot": slot.key, "question": slot.question.id,
                            "repeat": slot.repeat, "value": value})

    def _rejection(self, st: dict, slot: Slot, text: str, key: str) -> Entry:
        return Entry(self.layout.label(slot.question.id, slot.repeat),
                     self._prompt(st["lang"], slot, st["answers"]), _shorten(text),
                     self._t(st, key))

    def _missing(self, answers: dict[str, Any]) -> tuple[list[Slot], list[Slot]]:
        required, optional = [], []
        for slot in self.engine.slots(answers):
            if answers.get(slot.key) is not None:
                continue
            if self.engine.is_required(slot, answers):
                required.append(slot)
            elif slot.key not in answers:
                optional.append(slot)
        return required, optional

    def _submit(self, turn: Turn, now: datetime) -> Doc:
        """As the engine submits: prune answers that no longer apply, then done."""
        st = turn.state
        slots = self.engine.slots(st["answers"])
        live = {s.key for s in slots}
        for key in [k for k in st["answers"] if k not in live]:
            del st["answers"][key]
            qid, _, rep = key.partition("@")
            turn.events.append({"type": "answer_removed", "slot": key, "question": qid,
                                "repeat": int(rep) if rep else None})
        st["phase"], st["slot"] = "done", None
        st["submitted_at"] = now.isoformat()
        turn.events.append({"type": "submitted", "ref": st["ref"], "version": st["version"]})
        doc = Doc("receipt", st["lang"], self._subject(st))
        doc.blocks.append(Para(self._t(st, "submitted", ref=st["ref"], version=st["version"]),
                               "strong"))
        doc.blocks.append(Para(self._t(st, "mail_receipt_copy")))
        doc.blocks += self._answer_blocks(st)
        doc.footer = self._t(st, "mail_footer")
        return doc

    # -- applicability -------------------------------------------------------------------------

    def _applies(self, fq: FormQuestion, rep: int | None, answers: dict[str, Any],
                 memo: dict[str, bool | None]) -> bool | None:
        """True: the question applies; False: it cannot, given the answers; None: not known yet
        (it depends on a question that is not answered)."""
        key = slot_key(fq.question.id, rep)
        if key in memo:
            return memo[key]
        section, q = fq.section, fq.question
        result: bool | None = True
        if rep is not None and rep > 0:
            chain = [answers.get(slot_key(section.more_question, j)) for j in range(rep)]
            if any(v is not None and v != "YES" for v in chain):
                result = False
            elif any(v is None for v in chain):
                result = None
        if section.more_question == q.id and rep == section.repeat_max - 1:
            result = False
        if result is not False and section.ask_if is not None:
            result = _and(result, self._tri(section.ask_if, None, answers, memo))
        if result is not False and q.ask_if is not None:
            result = _and(result, self._tri(q.ask_if, rep, answers, memo))
        memo[key] = result
        return result

    def _tri(self, cond: Condition, rep: int | None, answers: dict[str, Any],
             memo: dict[str, bool | None]) -> bool | None:
        if cond.all is not None:
            parts = [self._tri(c, rep, answers, memo) for c in cond.all]
            return False if False in parts else (True if all(parts) else None)
        if cond.any is not None:
            parts = [self._tri(c, rep, answers, memo) for c in cond.any]
            return True if True in parts else (False if all(p is False for p in parts) else None)
        if cond.not_ is not None:
            inner = self._tri(cond.not_, rep, answers, memo)
            return None if inner is None else not inner
        ref = self.layout.by_qid[cond.question]
        ref_rep = rep if ref.repeated else None
        known = slot_key(ref.question.id, ref_rep) in answers or ref.question.id in answers
        if not known and self._applies(ref, ref_rep, answers, memo) is not False:
            return None
        return cond.holds(_getter(answers, rep))

    # -- documents -----------------------------------------------------------------------------

    def form_doc(self, st: dict[str, Any], *, notes: list[Block] | None = None,
                 offer_languages: bool = True, offers_first: bool = False) -> Doc:
        """The whole form in the respondent's language, with the answers given so far."""
        lang, answers = st["lang"], st["answers"]
        doc = Doc("form", lang, self._subject(st))
        blocks = doc.blocks
        if offers_first:
            blocks += self._language_offers(lang)
        blocks += notes or []
        blocks.append(Heading(self.tr.raw(lang, "title", self.qn.id), 1))
        blocks.append(Para(self._t(st, "mail_ref", ref=st["ref"]), "strong"))
        if not answers:
            blocks.append(Para(self._t(st, "welcome")))
        blocks += self._instructions(st)
        memo: dict[str, bool | None] = {}
        current_section = None
        for fq in self.layout.items:
            if fq.repeated:
                if fq.section is current_section:
                    continue
                current_section = fq.section
                blocks += self._repeat_blocks(st, fq.section, memo)
                continue
            if fq.section is not current_section:
                current_section = fq.section
                blocks.append(Heading(self.tr.section_title(lang, self.qn, fq.section.id)))
            applies = self._applies(fq, None, answers, memo)
            if applies is not False:
                blocks.append(self._field(st, Slot(fq.question.id, fq.question, None), applies,
                                          memo))
        if offer_languages and not offers_first:
            blocks += self._language_offers(lang)
        doc.footer = self._t(st, "mail_footer")
        return doc

    def _repeat_blocks(self, st: dict[str, Any], section: Section,
                       memo: dict[str, bool | None]) -> list[Block]:
        lang, answers = st["lang"], st["answers"]
        items = [fq for fq in self.layout.items if fq.section is section]
        first = items[0]
        if section.ask_if is not None and self._tri(section.ask_if, None, answers, memo) is False:
            return []
        out: list[Block] = [Heading(self.tr.section_title(lang, self.qn, section.id))]
        if section.ask_if is not None and self._tri(section.ask_if, None, answers, memo) is None:
            out.append(Para(self._describe(st, section.ask_if, None), "note"))
        rep = 0
        while True:
            out.append(Heading(self.tr.t(lang, "activity_label", n=rep + 1), 3))
            if rep:
                out.append(Para(self._t(st, "mail_activity_prefix", prefix=f"{rep + 1}.",
                                        example=f"{rep + 1}.{first.number}."), "note"))
            for fq in items:
                applies = self._applies(fq, rep, answers, memo)
                if applies is not False:
                    slot = Slot(slot_key(fq.question.id, rep), fq.question, rep)
                    out.append(self._field(st, slot, applies, memo))
            more = section.more_question
            if rep + 1 >= section.repeat_max or answers.get(slot_key(more, rep)) != "YES":
                break
            rep += 1
        if rep + 1 < section.repeat_max and section.more_question:
            yes = self.tr.option_label(lang, self.qn, self.qn.questions[section.more_question],
                                       "YES")
            out.append(Para(self._t(
                st, "mail_activity_add", n=self.layout.label(section.more_question, rep),
                yes=self._quote(lang, yes), example=f"{rep + 2}.{first.number}. …",
                max=section.repeat_max), "note"))
        return out

    def _field(self, st: dict[str, Any], slot: Slot, applies: bool | None,
               memo: dict[str, bool | None]) -> Field:
        lang, answers = st["lang"], st["answers"]
        q = slot.question
        required: bool | None
        if q.required:
            required = True
        elif q.required_if is not None:
            required = self._tri(q.required_if, slot.repeat, answers, memo)
        else:
            required = False
        options_key = None
        depends_on = q.other_of or q.options_from
        if depends_on:  # the prompt or the options shown depend on that answer
            parent_value = _getter(answers, slot.repeat)(depends_on)
            options_key = tuple(parent_value) if isinstance(parent_value, list) \
                else parent_value
        key = (lang, slot.key, applies, required, options_key)
        found = self._field_cache.get(key)
        if found is None:
            if len(self._field_cache) > 50_000:
                self._field_cache.clear()
            found = self._field_cache[key] = self._build_field(st, slot, applies, required)
        value = answers.get(slot.key, _UNSET)
        if value is not _UNSET:
            current = self._t(st, "mail_current",
                              value=self.engine.display_value(lang, q, value))
            found = dataclasses.replace(found, current=current)
        return found

    def _build_field(self, st: dict[str, Any], slot: Slot, applies: bool | None,
                     required: bool | None) -> Field:
        lang, answers = st["lang"], st["answers"]
        q = slot.question
        notes: list[str] = []
        if applies is None and q.ask_if is not None and not q.other_of:
            notes.append(self._describe(st, q.ask_if, slot.repeat))
        if required is None and q.required_if is not None:
            notes.append(self._describe(st, q.required_if, slot.repeat, "mail_required_if"))
        notes += self.engine.answer_hints(lang, q, self._format_hint(lang, q))
        options: tuple[tuple[str, str], ...] = ()
        if q.type in ("single_choice", "multi_choice"):
            source = q.options
            chosen = None
            if q.options_from:
                source = self.qn.questions[q.options_from].options
                chosen = _getter(answers, slot.repeat)(q.options_from)
                notes.insert(0, self._t(st, "mail_choose_from",
                                        n=self.layout.label(q.options_from, slot.repeat)))
            # Numbers of the full list (they never move); only what can be chosen is shown.
            options = tuple((str(i), self.tr.option_label(lang, self.qn, q, o.code))
                            for i, o in enumerate(source, start=1)
                            if not chosen or o.code in chosen)
        if required is True and (applies is True or not q.other_of):
            mark = "*"
        elif required is False:
            mark = self._t(st, "mail_optional")
        else:
            mark = ""
        return Field(self.layout.label(q.id, slot.repeat), self._prompt(lang, slot, answers),
                     mark, tuple(notes), options)

    def _format_hint(self, lang: str, q: Question) -> str:
        if q.type == "multi_choice":
            return self.tr.t(lang, "mail_hint_multi")
        key = {"single_choice": "hint_single"}.get(q.type, f"hint_{q.type}")
        return self.tr.t(lang, key)

    def _prompt(self, lang: str, slot: Slot, answers: dict[str, Any]) -> str:
        q = slot.question
        if not q.other_of:
            return self.tr.question_prompt(lang, self.qn, q)
        parent = self.qn.questions[q.other_of]
        value = _getter(answers, slot.repeat)(q.other_of)
        free = [o.code for o in parent.options if o.free_text]
        chosen = [c for c in (value if isinstance(value, list) else [value]) if c in free]
        labels = [self._quote(lang, self.tr.option_label(lang, self.qn, parent, c))
                  for c in (chosen or free)]
        return self.tr.t(lang, "mail_specify_other", option=self._or_list(lang, labels),
                         n=self.layout.label(q.other_of, slot.repeat))

    def _describe(self, st: dict[str, Any], cond: Condition, rep: int | None,
                  key_if: str = "mail_only_if") -> str:
        """A condition in words: "Only if your answer to question 7 is “Yes”."."""
        lang = st["lang"]
        if cond.all is not None and all(c.question for c in cond.all):
            return " ".join(self._describe(st, c, rep, key_if) for c in cond.all)
        if not cond.question:
            refs = sorted({self.layout.label(r, rep if self.layout.by_qid[r].repeated else None)
                           for r in cond.questions()})
            return self._t(st, "mail_depends", numbers=", ".join(refs))
        ref = self.layout.by_qid[cond.question]
        n = self.layout.label(cond.question, rep if ref.repeated else None)
        if cond.count_gt is not None:
            return self.tr.tn(lang, "mail_more_than", cond.count_gt, n=n)
        positive = cond.equals if cond.equals is not None else (cond.in_ or cond.any_of)
        negative = cond.not_equals if cond.not_equals is not None else cond.not_in
        if positive is not None:
            key, codes = key_if, positive
        elif negative is not None and key_if == "mail_only_if":
            key, codes = "mail_unless", negative
        else:
            return self._t(st, "mail_depends", numbers=n)
        codes = [codes] if isinstance(codes, str) else list(codes)
        values = self._or_list(lang, [self._quote(lang, self._value_label(lang, ref.question, c))
                                      for c in codes])
        return self._t(st, key, n=n, values=values)

    def _value_label(self, lang: str, q: Question, code: str) -> str:
        if q.type in ("single_choice", "multi_choice", "yes_no"):
            try:
                return self.tr.option_label(lang, self.qn, q, code)
            except KeyError:
                return code
        return code

    def _instructions(self, st: dict[str, Any]) -> list[Block]:
        lang = st["lang"]
        key = ("instructions", lang)
        found = self._static_cache.get(key)
        if found is None:
            words = {"submit_word": self.tr.raw(lang, "submit_word"),
                     "status": self._status_word(lang),
                     "cancel": self.tr.raw(lang, "mail_word_cancel"),
                     "language": self.tr.raw(lang, "mail_word_language")}
            single = next(fq.number for fq in self.layout.items
                          if fq.question.type == "single_choice")
            multi = next(fq.number for fq in self.layout.items
                         if fq.question.type == "multi_choice" and not fq.question.options_from)
            example = self.tr.raw(lang, "mail_example_name")
            sep = self.tr.raw(lang, "mail_list_sep")
            found = [Heading(self.tr.t(lang, "mail_how_title")),
                     Para(self.tr.t(lang, "mail_how")),
                     Example(self._example_lines(lang, ((1, example), (single, "2"),
                                                        (multi, sep.join(("1", "3")))))),
                     Para(self.tr.t(lang, "mail_how_options")),
                     Para(self.tr.t(lang, "mail_how_required")),
                     Para(self.tr.t(lang, "mail_how_confirm", word=words["submit_word"])),
                     Para(self.tr.t(lang, "mail_how_commands", status=words["status"],
                                    cancel=words["cancel"], language=words["language"]))]
            self._static_cache[key] = found
        return list(found)

    def _example_lines(self, lang: str, lines: Iterable[tuple[int, str]]) -> tuple[str, ...]:
        """"N. answer" lines; in Arabic each stays a right-to-left line with "N." intact."""
        return tuple(f"{self.tr.line_start(lang)}{self.tr.ltr(lang, f'{n}.')} {answer}"
                     for n, answer in lines)

    def _language_offers(self, lang: str) -> list[Block]:
        key = ("offers", lang)
        found = self._static_cache.get(key)
        if found is None:
            lines = [self.tr.t(other, "mail_language_offer",
                               command=f"{self.tr.raw(other, 'mail_word_language')}: {other}")
                     for other in self.tr.languages if other != lang]
            found = self._static_cache[key] = [Para("\n".join(lines), "note")]
        return list(found)

    def _digest(self, st: dict[str, Any], notes: list[Block], recorded: list[Entry],
                rejected: list[Entry], missing: list[Slot], optional_left: list[Slot], *,
                found_nothing: bool, offer_languages: bool = False) -> Doc:
        lang = st["lang"]
        complete = not missing
        doc = Doc("review" if complete else "digest", lang, self._subject(st))
        blocks = doc.blocks
        blocks += notes
        if found_nothing:
            blocks.append(Para(self._t(st, "mail_no_answers",
                                       example=f"1. {self.tr.raw(lang, 'mail_example_name')}")))
        blocks += self._results(st, recorded, rejected)
        if complete and st["phase"] in ("review", "asking"):
            blocks.append(Para(self._t(st, "mail_complete",
                                       word=self.tr.raw(lang, "submit_word")), "strong"))
            blocks += self._answer_blocks(st)
        elif not complete:
            blocks.append(Heading(self.tr.tn(lang, "mail_missing", len(missing))))
            memo: dict[str, bool | None] = {}
            section_seen = None
            for slot in missing:
                header = (slot.question.section, slot.repeat)
                if header != section_seen:
                    section_seen = header
                    title = self.tr.section_title(lang, self.qn, slot.question.section)
                    if slot.repeat is not None:
                        title += " · " + self.tr.t(lang, "activity_label", n=slot.repeat + 1)
                    blocks.append(Heading(title, 3))
                blocks.append(self._field(st, slot, True, memo))
            if optional_left:
                numbers = ", ".join(self.layout.label(s.question.id, s.repeat)
                                    for s in optional_left)
                blocks.append(Para(self._t(st, "mail_optional_left", numbers=numbers,
                                           word=self._status_word(lang)), "note"))
        if offer_languages:
            blocks += self._language_offers(lang)
        doc.footer = self._t(st, "mail_footer")
        return doc

    def _results(self, st: dict[str, Any], recorded: list[Entry],
                 rejected: list[Entry]) -> list[Block]:
        lang = st["lang"]
        out: list[Block] = []
        if recorded:
            out.append(Heading(self.tr.tn(lang, "mail_recorded", len(recorded))))
            out += recorded
        if rejected:
            out.append(Heading(self.tr.tn(lang, "mail_rejected", len(rejected))))
            out += rejected
        return out

    def _answer_blocks(self, st: dict[str, Any]) -> list[Block]:
        lang, answers = st["lang"], st["answers"]
        out: list[Block] = [Heading(self.tr.t(lang, "mail_answers_title"))]
        section_seen = None
        for slot in self.engine.slots(answers):
            if slot.key not in answers:
                continue
            header = (slot.question.section, slot.repeat)
            if header != section_seen:
                section_seen = header
                title = self.tr.section_title(lang, self.qn, slot.question.section)
                if slot.repeat is not None:
                    title += " · " + self.tr.t(lang, "activity_label", n=slot.repeat + 1)
                out.append(Heading(title, 3))
            out.append(Entry(self.layout.label(slot.question.id, slot.repeat),
                             self._prompt(lang, slot, answers),
                             self.engine.display_value(lang, slot.question, answers[slot.key])))
        return out

    def notice_doc(self, lang: str, key: str, **values: Any) -> Doc:
        """A one-paragraph notice outside any report (message too large, bad reference)."""
        doc = Doc("notice", lang, self.tr.raw(lang, "title", self.qn.id))
        doc.blocks.append(Para(self.tr.t(lang, key, **values)))
        doc.footer = self.tr.t(lang, "mail_footer")
        return doc

    def verify_doc(self, state: dict[str, Any]) -> Doc:
        """The answer to a mail from a report owner's address that could not be shown to be
        theirs (no reply token): nothing changed; reply to this mail (it carries a fresh
        token) to go on. It quotes nothing of that mail, and has the report's own subject."""
        st = {**state, "lang": state.get("lang") or "en"}
        doc = self._notice(st, "mail_verify", ref=st["ref"])
        doc.kind = "verify"
        return doc

    def _notice(self, st: dict[str, Any], key: str, **values: Any) -> Doc:
        doc = Doc("notice", st["lang"] or "en", self._subject(st))
        doc.blocks.append(Para(self._t(st, key, **values)))
        doc.footer = self._t(st, "mail_footer")
        return doc

    # -- small helpers -------------------------------------------------------------------------

    def _subject(self, st: dict[str, Any]) -> str:
        lang = st["lang"] or "en"
        return self.tr.t(lang, "mail_subject", title=self.tr.raw(lang, "title", self.qn.id),
                         ref=st["ref"])

    def _t(self, st: dict[str, Any], key: str, **values: Any) -> str:
        return self.tr.t(st["lang"] or "en", key, **values)

    def _status_word(self, lang: str) -> str:
        return self.tr.raw(lang, "mail_word_status")

    def _amend_word(self, lang: str) -> str:
        return self.tr.raw(lang, "amend_button").upper()

    def _quote(self, lang: str, text: str) -> str:
        return self.tr.t(lang, "mail_quote", text=text)

    def _or_list(self, lang: str, items: list[str]) -> str:
        if len(items) < 2:
            return items[0] if items else ""
        sep = self.tr.raw(lang, "mail_list_sep")
        return self.tr.t(lang, "mail_list_or", items=sep.join(items[:-1]), last=items[-1])


class _Unset:
    def __repr__(self) -> str:
        return "<unset>"


_UNSET: Any = _Unset()


def bare_subject(subject: str) -> str:
    """A subject without reply/forward prefixes ("Re: RE: Fwd:", "回复：", "رد:") and
    [ref:…] tags."""
    return " ".join(_SUBJECT_TAG.sub("", _SUBJECT_PREFIX.sub("", subject or "")).split())


def _getter(answers: dict[str, Any], repeat: int | None) -> Callable[[str], Any]:
    def value_of(qid: str) -> Any:
        if repeat is not None:
            v = answers.get(f"{qid}@{repeat}")
            if v is not None:
                return v
        return answers.get(qid)
    return value_of


def _and(a: bool | None, b: bool | None) -> bool | None:
    if a is False or b is False:
        return False
    return None if a is None or b is None else True


def _strip_prefix(text: str, prefix: str) -> str | None:
    """text without a leading prefix given in folded form (case and accents ignored)."""
    if not prefix:
        return None
    for i in range(len(prefix) // 2, len(text) + 1):
        if fold(text[:i]) == prefix:
            return text[i:]
    return None


def _shorten(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


__all__ = ["Doc", "Entry", "Example", "Field", "Heading", "Layout", "MailForm", "MailOut",
           "MailTurn", "Para", "ReadReply", "bare_subject"]
