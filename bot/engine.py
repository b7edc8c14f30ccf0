"""The conversation engine: a pure function (questionnaire, state, inbound, now) -> turn.

The only state machine: chat messages (one answer, a button, a command) and email replies
(`Inbound(kind="form")`: several numbered answers and command words at once, applied by
bot/form_turn.py) go through the same recording, validation, conditions (bot/rules.py),
submission, amendment, cancellation and language code.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from bot.answers import AnswerError, AnswerParser, as_index, clean_text, normalize_digits
from bot.aside_turn import ASIDES, AsideTurns
from bot.countries import country_table
from bot.display import Display, language_aliases
from bot.events import (
    Amended,
    AnswerRecorded,
    AnswerRemoved,
    Cancelled,
    Event,
    Invalid,
    Resumed,
    Stale,
    Started,
    Submitted,
)
from bot.form_turn import FormOutcome, FormTurns
from bot.i18n import LANGUAGES, Translations, fold
from bot.language import Detection
from bot.language_turn import LanguageTurns
from bot.messages import Inbound, Reply
from bot.prompts import AMEND, DONE, SUBMIT, Prompts
from bot.questionnaire import Numbering, Option, Question, Questionnaire
from bot.rules import Rules, Slot, slot_key, split_slot, value_getter

STATE_VERSION = 1
COMMANDS = frozenset({"start", "back", "skip", "review", "language", "help", "cancel", "amend",
                      *ASIDES})
_EDIT_RE = re.compile(r"^(\D+?)\s*(\d+)$")
_COMMAND_RE = re.compile(r"^/([A-Za-z_]+)(?:@\w+)?(?:\s+(.*))?$", re.DOTALL)


@dataclass(slots=True)
class Turn:
    state: dict[str, Any]
    replies: list[Reply] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    outcome: FormOutcome | None = None  # for a form inbound: what its entries came to

    @property
    def awaiting(self) -> str:
        return awaiting(self.state)


def awaiting(state: dict[str, Any]) -> str:
    """What the conversation waits for: a question id, or language / review / done / cancelled."""
    phase = state["phase"]
    if state.get("aside"):  # /email or /stop waiting for its answer
        return state["aside"]["kind"]
    if phase == "asking" and state.get("slot"):
        return split_slot(state["slot"])[0]
    return {"new": "start", "asking": "review"}.get(phase, phase)


def awaiting_key(state: dict[str, Any]) -> str:
    """Like awaiting() but with the repeat index, used to spot presses on old buttons."""
    if state.get("aside"):
        return state["aside"]["kind"]
    return state["slot"] if state["phase"] == "asking" and state.get("slot") else state["phase"]


class Engine(FormTurns, LanguageTurns, AsideTurns, Prompts):
    """Holds the immutable questionnaire and catalogs; every call is a pure state transition."""

    def __init__(self, questionnaire: Questionnaire, translations: Translations) -> None:
        self.qn = questionnaire
        self.tr = translations
        self.parser = AnswerParser(translations)
        self.rules = Rules(questionnaire)
        self.display = Display(questionnaire, translations)
        self.numbering = Numbering(questionnaire)
        langs = translations.languages
        self._submit_words = {fold(translations.raw(lang, key)) for lang in langs
                              for key in ("submit_word", "submit_button")} | {"submit"}
        self._edit_words = {fold(translations.raw(lang, "edit_word")) for lang in langs}
        self._edit_words.add("edit")
        self._done_words = {"done", "/done"} | {
            fold(translations.raw(lang, "done_button")) for lang in translations.languages}
        self._amend_words = {"amend"} | {
            fold(translations.raw(lang, "amend_button")) for lang in translations.languages}
        self._triggers = self.rules.triggers
        self._language_names = language_aliases(translations)

    # -- state -------------------------------------------------------------------------------

    def new_state(self, *, ref: str, language: str | None = None, explicit: bool = False,
                  prefill: dict[str, Any] | None = None) -> dict[str, Any]:
        return {
            "v": STATE_VERSION, "questionnaire": self.qn.id, "qversion": self.qn.version,
            "ref": ref, "version": 1, "phase": "new", "slot": None,
            "lang": language if language in LANGUAGES else None,
            "lang_explicit": bool(explicit and language in LANGUAGES),
            "answers": dict(prefill or {}), "pending": [], "resume": None,
        }

    # -- slots (bot/rules.py) -------------------------------------------------------------------

    def slots(self, answers: dict[str, Any]) -> list[Slot]:
        """Questions that apply given the answers so far, in order, repeat instances expanded."""
        return self.rules.slots(answers)

    def is_required(self, slot: Slot, answers: dict[str, Any]) -> bool:
        return self.rules.is_required(slot, answers)

    def options(self, slot: Slot, answers: dict[str, Any]) -> tuple[Option, ...]:
        q = slot.question
        if not q.options_from:
            return q.options
        chosen = value_getter(answers, slot.repeat)(q.options_from) or []
        source = self.qn.questions[q.options_from].options
        return tuple(o for o in source if o.code in chosen)

    def _next_unanswered(self, slots: list[Slot], answers: dict[str, Any]) -> Slot | None:
        return next((s for s in slots if s.key not in answers), None)

    # -- entry point ---------------------------------------------------------------------------

    def handle(self, state: dict[str, Any], inbound: Inbound, now: datetime,
               detection: Detection | None = None) -> Turn:
        st = {**state, "answers": dict(state["answers"]), "pending": list(state["pending"])}
        turn = Turn(st)
        if inbound.kind == "form":  # an email reply: several answers and commands at once
            self._form_turn(turn, inbound, now, detection or inbound.detection)
            return turn
        cmd, arg = self._command(inbound)
        phase = st["phase"]
        if inbound.kind == "start" or cmd == "start" or phase == "new":
            st.pop("aside", None)
            self._start(turn, inbound, detection, now)
        elif (inbound.kind == "choice" and inbound.for_slot
              and inbound.for_slot != awaiting_key(st)):
            turn.events.append(Stale(inbound.choice, inbound.for_slot))
            self._say(turn, "error_stale", kind="error")
            self._prompt_current(turn)
        elif st.get("aside") and self._aside_input(turn, inbound, cmd):
            pass
        elif cmd in ASIDES and (cmd == "stop" or phase in ("asking", "review")):
            self._aside_open(turn, inbound, cmd)
        elif cmd == "language":
            self._show_language_menu(turn, st["lang"] or "en", resume=phase)
        elif phase == "language":
            self._language_input(turn, inbound, detection, cmd)
        elif inbound.kind == "unsupported":
            self._say(turn, "error_unsupported", kind="error")
            self._prompt_current(turn)
        elif cmd == "help":
            self._say(turn, "help")
            self._prompt_current(turn)
        elif cmd == "cancel":
            if phase in ("asking", "review"):
                self._cancel(turn)
                self._say(turn, "cancelled")
            else:
                self._prompt_current(turn)
        elif cmd is not None and cmd not in COMMANDS:
            self._say(turn, "error_unknown_command", kind="error", command="/" + cmd[:30])
            self._prompt_current(turn)
        elif phase == "cancelled":
            self._say(turn, "cancelled")
        elif phase == "done":
            self._done_input(turn, inbound, cmd, now)
        elif phase == "review":
            self._review_input(turn, inbound, cmd, arg, now)
        else:
            self._asking_input(turn, inbound, cmd)
        return turn

    def _command(self, inbound: Inbound) -> tuple[str | None, str]:
        if inbound.kind == "choice":
            code = (inbound.choice or "").upper()
            return {"SKIP": ("skip", ""), "BACK": ("back", ""),
                    "REVIEW": ("review", "")}.get(code, (None, ""))
        if inbound.kind != "text":
            return None, ""
        m = _COMMAND_RE.match(clean_text(inbound.text[:400])[:200])
        if not m:
            return None, ""
        return m.group(1).lower(), (m.group(2) or "").strip()

    # -- transitions shared by chat and form turns ---------------------------------------------

    def _started(self, turn: Turn) -> None:
        turn.state["phase"] = "asking"
        turn.events.append(Started(turn.state["lang"]))

    def _cancel(self, turn: Turn) -> None:
        st = turn.state
        st["phase"], st["resume"] = "cancelled", st["phase"]
        turn.events.append(Cancelled())

    def _resume(self, turn: Turn) -> None:
        st = turn.state
        st["phase"] = st.get("resume") or "asking"
        turn.events.append(Resumed())

    def _amend(self, turn: Turn) -> None:
        st = turn.state
        st["version"] += 1
        st["phase"], st["slot"], st["submitted_at"] = "review", None, None
        turn.events.append(Amended(st["ref"], st["version"]))

    def _finish(self, turn: Turn, now: datetime) -> None:
        """Submit: drop answers that no longer apply, then done."""
        st = turn.state
        live = {s.key for s in self.slots(st["answers"])}
        for key in [k for k in st["answers"] if k not in live]:
            del st["answers"][key]
            qid, rep = split_slot(key)
            turn.events.append(AnswerRemoved(key, qid, rep))
        st["phase"], st["slot"] = "done", None
        st["submitted_at"] = now.isoformat()
        turn.events.append(Submitted(st["ref"], st["version"]))

    def _record(self, turn: Turn, slot: Slot, value: Any) -> None:
        st = turn.state
        st["answers"][slot.key] = value
        st["pending"] = []
        st.pop("offered", None)
        turn.events.append(AnswerRecorded(slot.key, slot.question.id, slot.repeat, value))

    def _invalid(self, turn: Turn, slot: Slot, reason: str) -> None:
        turn.events.append(Invalid(slot.key, reason))


    # -- asking ------------------------------------------------------------------------------

    def _asking_input(self, turn: Turn, inbound: Inbound, cmd: str | None) -> None:
        st = turn.state
        slots = self.slots(st["answers"])
        current = self._find(slots, st["slot"])
        if current is None:  # answers changed under the cursor (e.g. restored state)
            self._advance(turn, slots)
            return
        if cmd == "back":
            index = slots.index(current)
            if index == 0:
                self._say(turn, "error_back_at_start", kind="error")
            else:
                st["slot"], st["pending"] = slots[index - 1].key, []
            self._ask(turn, slots)
            return
        if cmd == "skip":
            if self.is_required(current, st["answers"]):
                self._say(turn, "error_required", kind="error")
                self._ask(turn, slots)
            else:
                self._record(turn, current, None)
                self._say(turn, "skipped")
                self._advance(turn)
            return
        if cmd == "review":
            self._send_review(turn, slots, complete=False)
            self._ask(turn, slots)
            return
        if cmd == "amend":
            self._ask(turn, slots)
            return
        if inbound.kind == "text" and self._try_edit(turn, inbound.text, slots):
            return
        q = current.question
        options = self.options(current, st["answers"])
        if inbound.kind == "choice":
            self._choice_answer(turn, current, options, (inbound.choice or "").upper(), slots)
            return
        text = inbound.text
        offered = self._offered(st, current)
        typed = normalize_digits(clean_text(text)).rstrip(".)")
        index = as_index(typed)
        if offered and index is not None and 1 <= index <= len(offered):
            self._record(turn, current, offered[index - 1])
            self._advance(turn, None if q.id in self._triggers else slots)
            return
        if q.type == "multi_choice" and fold(clean_text(text)) in self._done_words:
            self._finish_multi(turn, current, options, slots)
            return
        try:
            value = self.parser.parse(self.qn, q, text, st["lang"], options,
                                      value_getter(st["answers"], current.repeat))
        except AnswerError as err:
            self._invalid(turn, current, err.key)
            if err.choices and q.type == "country":
                st["offered"] = {"slot": current.key, "codes": list(err.choices)}
            self._error(turn, err)
            self._ask(turn, slots, repeat_prompt=False)
            return
        if q.type == "multi_choice" and len(value) == 1 and not _looks_like_list(text):
            # One option typed: add it and wait for more, as with buttons, until DONE.
            if value[0] not in st["pending"]:
                st["pending"].append(value[0])
            if q.max_select and len(st["pending"]) > q.max_select:
                st["pending"].remove(value[0])
                self._error(turn, AnswerError("error_max_select", count=q.max_select))
            self._ask(turn, slots)
            return
        self._record(turn, current, value)
        self._advance(turn, None if q.id in self._triggers else slots)

    def _choice_answer(self, turn: Turn, slot: Slot, options: tuple[Option, ...], code: str,
                       slots: list[Slot]) -> None:
        st, q = turn.state, slot.question
        codes = [o.code for o in options]
        if q.is_multi and code == DONE:
            self._finish_multi(turn, slot, options, slots)
        elif q.type == "multi_choice" and code in codes:
            pending = st["pending"]
            if code in pending:
                pending.remove(code)
            elif q.max_select and len(pending) >= q.max_select:
                self._error(turn, AnswerError("error_max_select", count=q.max_select))
            else:
                pending.append(code)
            self._ask(turn, slots)
        elif q.type in ("single_choice", "yes_no") and code in codes:
            self._record(turn, slot, code)
            self._advance(turn, None if q.id in self._triggers else slots)
        elif q.type == "country" and code.lower() in country_table():
            self._record(turn, slot, code.lower())
            self._advance(turn, None if q.id in self._triggers else slots)
        elif not codes:
            # A press for a question answered by typing (hand-made callback data, a console
            # {"choice"}): ask for the typed answer, not for "a number from 1 to 0".
            self._invalid(turn, slot, "bad_choice")
            if q.type == "country":
                self._error(turn, AnswerError("error_country", text=code[:40]))
            else:
                self._say(turn, "error_empty", kind="error")
            self._ask(turn, slots, repeat_prompt=False)
        else:
            self._invalid(turn, slot, "bad_choice")
            self._error(turn, AnswerError("error_choice", text=code[:40], count=len(codes)))
            self._ask(turn, slots, repeat_prompt=False)

    def _finish_multi(self, turn: Turn, slot: Slot, options: tuple[Option, ...],
                      slots: list[Slot]) -> None:
        st = turn.state
        if not st["pending"]:
            if self.is_required(slot, st["answers"]):
                self._error(turn, AnswerError("error_multi_empty"))
                self._ask(turn, slots, repeat_prompt=False)
                return
            self._record(turn, slot, None)
        else:
            order = {o.code: i for i, o in enumerate(options)}
            self._record(turn, slot, sorted(st["pending"], key=lambda c: order.get(c, 99)))
        self._advance(turn)

    def _advance(self, turn: Turn, slots: list[Slot] | None = None) -> None:
        st = turn.state
        slots = self.slots(st["answers"]) if slots is None else slots
        nxt = self._next_unanswered(slots, st["answers"])
        st["pending"] = []
        if nxt is None:
            st["phase"], st["slot"] = "review", None
            self._send_review(turn, slots, complete=True)
        else:
            st["phase"], st["slot"] = "asking", nxt.key
            self._ask(turn, slots)

    @staticmethod
    def _offered(st: dict[str, Any], slot: Slot) -> list[str]:
        """Countries offered after a name that matched several, or none exactly."""
        offered = st.get("offered")
        return offered["codes"] if offered and offered.get("slot") == slot.key else []

    @staticmethod
    def _find(slots: list[Slot], key: str | None) -> Slot | None:
        return next((s for s in slots if s.key == key), None)

    # -- review, submission, amendment -------------------------------------------------------

    def _try_edit(self, turn: Turn, text: str, slots: list[Slot]) -> bool:
        if len(text) > 40 or not any(ch.isdigit() for ch in text):
            return False
        m = _EDIT_RE.match(fold(normalize_digits(clean_text(text))).lstrip("/"))
        if not m or m.group(1) not in self._edit_words:
            return False
        words = [m.group(1), m.group(2)]  # "edit 3", and "编辑3" with no space
        st = turn.state
        items = self._review_items(slots, st["answers"])
        index = as_index(words[1])
        if index is None or not 1 <= index <= len(items):
            self._say(turn, "error_edit_range", kind="error", n=words[1][:10],
                      count=len(items))
            self._prompt_current(turn)
            return True
        st["phase"], st["slot"], st["pending"] = "asking", items[index - 1].key, []
        self._ask(turn, slots)
        return True

    def _review_input(self, turn: Turn, inbound: Inbound, cmd: str | None, arg: str,
                      now: datetime) -> None:
        st = turn.state
        slots = self.slots(st["answers"])
        if self._next_unanswered(slots, st["answers"]):  # answers changed: ask what is missing
            self._advance(turn, slots)
            return
        code = (inbound.choice or "").upper() if inbound.kind == "choice" else ""
        word = fold(clean_text(inbound.text)) if inbound.kind == "text" else ""
        if code == SUBMIT or word in self._submit_words:
            self._submit(turn, slots, now)
        elif cmd == "back":
            st["phase"], st["slot"] = "asking", slots[-1].key
            self._ask(turn, slots)
        elif cmd == "skip":
            self._say(turn, "error_review_choice", kind="error")
            self._send_review(turn, slots, complete=True)
        elif inbound.kind == "text" and self._try_edit(turn, inbound.text, slots):
            return
        elif cmd == "review":
            self._send_review(turn, slots, complete=True)
        else:
            self._say(turn, "error_review_choice", kind="error")
            self._send_review(turn, slots, complete=True)

    def _submit(self, turn: Turn, slots: list[Slot], now: datetime) -> None:
        st = turn.state
        self._finish(turn, now)
        lang = st["lang"]
        text = self.tr.t(lang, "submitted", ref=st["ref"], version=st["version"])
        turn.replies.append(Reply(text, "receipt", lang))

    def _done_input(self, turn: Turn, inbound: Inbound, cmd: str | None,
                    now: datetime) -> None:
        st = turn.state
        wants_amend = cmd == "amend" or (
            inbound.kind == "choice" and (inbound.choice or "").upper() == AMEND) or (
            inbound.kind == "text" and fold(clean_text(inbound.text)) in self._amend_words)
        if not wants_amend:
            self._say_submitted(turn)
            return
        self._amend(turn)
        self._say(turn, "amend_started", ref=st["ref"], version=st["version"])
        self._advance(turn)

    # -- rendering (bot/display.py) ----------------------------------------------------------

    def prompt_text(self, lang: str, slot: Slot, answers: dict[str, Any]) -> str:
        return self.display.prompt_text(lang, slot, answers)

    def display_value(self, lang: str, q: Question, value: Any) -> str:
        return self.display.display_value(lang, q, value)

    def answer_hints(self, lang: str, q: Question, format_hint: str | None = None) -> list[str]:
        return self.display.answer_hints(lang, q, format_hint)

    def error_text(self, lang: str, err: AnswerError) -> str:
        return self.display.error_text(lang, err)


def _looks_like_list(text: str) -> bool:
    return bool(re.search(r"[,;，；、،؛\n]|\d\s+\d", normalize_digits(text)))


__all__ = ["AMEND", "DONE", "SUBMIT", "Engine", "Slot", "Turn", "awaiting", "awaiting_key",
           "slot_key", "split_slot"]
