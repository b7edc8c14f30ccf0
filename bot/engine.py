"""The conversation engine: a pure function (questionnaire, state, inbound, now) -> turn."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from bot.answers import AnswerError, AnswerParser, clean_text, length_limit, normalize_digits
from bot.countries import country_table
from bot.i18n import LANGUAGES, Translations, fold
from bot.language import Detection, normalize_language_tag
from bot.messages import Choice, Inbound, Reply
from bot.questionnaire import Option, Question, Questionnaire

STATE_VERSION = 1
COMMANDS = frozenset({"start", "back", "skip", "review", "language", "help", "cancel", "amend"})
DONE, SUBMIT, AMEND = "DONE", "SUBMIT", "AMEND"
_EDIT_RE = re.compile(r"^(\D+?)\s*(\d+)$")
_COMMAND_RE = re.compile(r"^/([A-Za-z_]+)(?:@\w+)?(?:\s+(.*))?$", re.DOTALL)


@dataclass(frozen=True, slots=True, eq=False)  # identity: slots come from one cached list
class Slot:
    key: str  # "R1_name" or "A1_title@0" inside the repeated section
    question: Question
    repeat: int | None


@dataclass(slots=True)
class Turn:
    state: dict[str, Any]
    replies: list[Reply] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)

    @property
    def awaiting(self) -> str:
        return awaiting(self.state)


def slot_key(qid: str, repeat: int | None) -> str:
    return qid if repeat is None else f"{qid}@{repeat}"


def split_slot(key: str) -> tuple[str, int | None]:
    qid, _, rep = key.partition("@")
    return qid, (int(rep) if rep else None)


def awaiting(state: dict[str, Any]) -> str:
    """What the conversation waits for: a question id, or language / review / done / cancelled."""
    phase = state["phase"]
    if phase == "asking" and state.get("slot"):
        return split_slot(state["slot"])[0]
    return {"new": "start", "asking": "review"}.get(phase, phase)


def awaiting_key(state: dict[str, Any]) -> str:
    """Like awaiting() but with the repeat index, used to spot presses on old buttons."""
    return state["slot"] if state["phase"] == "asking" and state.get("slot") else state["phase"]


class Engine:
    """Holds the immutable questionnaire and catalogs; every call is a pure state transition."""

    def __init__(self, questionnaire: Questionnaire, translations: Translations) -> None:
        self.qn = questionnaire
        self.tr = translations
        self.parser = AnswerParser(translations)
        langs = translations.languages
        self._submit_words = {fold(translations.raw(lang, key)) for lang in langs
                              for key in ("submit_word", "submit_button")} | {"submit"}
        self._edit_words = {fold(translations.raw(lang, "edit_word")) for lang in langs}
        self._edit_words.add("edit")
        self._done_words = {"done", "/done"} | {
            fold(translations.raw(lang, "done_button")) for lang in translations.languages}
        self._amend_words = {"amend"} | {
            fold(translations.raw(lang, "amend_button")) for lang in translations.languages}
        self._triggers = frozenset(
            ref for sec in questionnaire.sections
            for cond in [sec.ask_if, *(q.ask_if for q in sec.questions)] if cond
            for ref in cond.questions()) | {
            sec.more_question for sec in questionnaire.sections if sec.more_question}
        # Every answer slot a condition can look at (repeat instances spelled out).
        repeated = {q.id for sec in questionnaire.sections if sec.repeat_max > 1
                    for q in sec.questions}
        max_repeat = max(sec.repeat_max for sec in questionnaire.sections)
        self._trigger_keys = tuple(sorted(
            slot_key(qid, r) for qid in self._triggers
            for r in (range(max_repeat) if qid in repeated else (None,))))
        self._slot_cache: dict[tuple, list[Slot]] = {}
        # question id -> (part, number in its part, questions in the part); "please specify"
        # questions share their parent's number.
        self._positions: dict[str, tuple[int, int, int]] = {}
        for part, sec in enumerate(questionnaire.sections, start=1):
            numbered = [q for q in sec.questions if not q.other_of]
            for number, q in enumerate(numbered, start=1):
                self._positions[q.id] = (part, number, len(numbered))
        self._label_cache: dict[tuple, tuple[tuple[str, str], ...]] = {}
        self._hint_cache: dict[tuple, tuple[str, ...]] = {}
        self._language_names: dict[str, str] = {}
        for lang in LANGUAGES:
            self._language_names[lang] = lang
        for lang in translations.languages:
            self._language_names[fold(translations.language_name(lang))] = lang
        for name, lang in (("arabic", "ar"), ("english", "en"), ("spanish", "es"),
                           ("french", "fr"), ("russian", "ru"), ("chinese", "zh"),
                           ("francais", "fr"), ("espanol", "es"), ("russkii", "ru"),
                           ("русский", "ru"), ("中文", "zh"), ("汉语", "zh"), ("عربي", "ar")):
            self._language_names.setdefault(fold(name), lang)

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

    # -- slots -------------------------------------------------------------------------------

    def slots(self, answers: dict[str, Any]) -> list[Slot]:
        """Questions that apply given the answers so far, in order, repeat instances expanded.

        Only answers to questions that conditions look at can change the list, so it is
        memoized on those values: most turns reuse a list computed before.
        """
        key = tuple([tuple(v) if type(v) is list else v
                     for v in map(answers.get, self._trigger_keys)])
        found = self._slot_cache.get(key)
        if found is None:
            if len(self._slot_cache) > 20_000:
                self._slot_cache.clear()
            found = self._slot_cache[key] = self._compute_slots(answers)
        return found

    def _compute_slots(self, answers: dict[str, Any]) -> list[Slot]:
        out: list[Slot] = []
        top = answers.get
        for section in self.qn.sections:
            if section.ask_if and not section.ask_if.holds(top):
                continue
            if section.repeat_max == 1:
                for q in section.questions:
                    if q.ask_if is None or q.ask_if.holds(top):
                        out.append(Slot(q.id, q, None))
                continue
            repeat = 0
            while True:
                def value_of(qid: str, r: int = repeat) -> Any:
                    v = answers.get(f"{qid}@{r}")
                    return v if v is not None else answers.get(qid)

                last = repeat + 1 >= section.repeat_max
                for q in section.questions:
                    if q.id == section.more_question and last:
                        continue
                    if q.ask_if is None or q.ask_if.holds(value_of):
                        out.append(Slot(f"{q.id}@{repeat}", q, repeat))
                if last or answers.get(f"{section.more_question}@{repeat}") != "YES":
                    break
                repeat += 1
        return out

    def _value_getter(self, answers: dict[str, Any], repeat: int | None):
        def value_of(qid: str) -> Any:
            if repeat is not None:
                v = answers.get(f"{qid}@{repeat}")
                if v is not None:
                    return v
            return answers.get(qid)
        return value_of

    def is_required(self, slot: Slot, answers: dict[str, Any]) -> bool:
        q = slot.question
        if q.required:
            return True
        return bool(q.required_if and q.required_if.holds(self._value_getter(answers,
                                                                              slot.repeat)))

    def options(self, slot: Slot, answers: dict[str, Any]) -> tuple[Option, ...]:
        q = slot.question
        if not q.options_from:
            return q.options
        chosen = self._value_getter(answers, slot.repeat)(q.options_from) or []
        source = self.qn.questions[q.options_from].options
        return tuple(o for o in source if o.code in chosen)

    def _next_unanswered(self, slots: list[Slot], answers: dict[str, Any]) -> Slot | None:
        return next((s for s in slots if s.key not in answers), None)

    # -- entry point ---------------------------------------------------------------------------

    def handle(self, state: dict[str, Any], inbound: Inbound, now: datetime,
               detection: Detection | None = None) -> Turn:
        st = {**state, "answers": dict(state["answers"]), "pending": list(state["pending"])}
        turn = Turn(st)
        cmd, arg = self._command(inbound)
        phase = st["phase"]
        if inbound.kind == "start" or cmd == "start" or phase == "new":
            self._start(turn, inbound, detection, now)
        elif (inbound.kind == "choice" and inbound.for_slot
              and inbound.for_slot != awaiting_key(st)):
            turn.events.append({"type": "stale", "pressed": inbound.choice,
                                "for": inbound.for_slot})
            self._say(turn, "error_stale", kind="error")
            self._prompt_current(turn)
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
                st["phase"], st["resume"] = "cancelled", phase
                turn.events.append({"type": "cancelled"})
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

    # -- start and language ------------------------------------------------------------------

    def _start(self, turn: Turn, inbound: Inbound, detection: Detection | None,
               now: datetime) -> None:
        st = turn.state
        if st["phase"] == "done":
            self._say_submitted(turn)
            return
        if st["phase"] == "cancelled":
            st["phase"] = st.get("resume") or "asking"
            turn.events.append({"type": "resumed"})
        if st["phase"] in ("asking", "review"):
            self._say(turn, "welcome_back")
            self._prompt_current(turn)
            return
        if st["phase"] == "language":
            self._show_language_menu(turn, st.get("lang_proposed") or "en", resume=None)
            return
        # First contact.
        if st["lang"]:
            self._begin(turn, now)
            return
        text_detection = detection if inbound.kind == "text" and not inbound.text.startswith(
            "/") else None
        if text_detection and text_detection.confident and not text_detection.other:
            self._set_language(turn, text_detection.language, explicit=False)
            self._begin(turn, now)
            return
        proposed = normalize_language_tag(inbound.language_hint) or (
            text_detection.language if text_detection and text_detection.language else None)
        if text_detection and text_detection.other:
            self._show_language_menu(turn, "en", resume=None, unsupported=True)
        else:
            self._show_language_menu(turn, proposed or "en", resume=None)

    def _begin(self, turn: Turn, now: datetime) -> None:
        st = turn.state
        st["phase"] = "asking"
        turn.events.append({"type": "started", "language": st["lang"]})
        self._say(turn, "welcome")
        self._advance(turn)

    def _show_language_menu(self, turn: Turn, proposed: str, resume: str | None,
                            unsupported: bool = False) -> None:
        st = turn.state
        if st["phase"] != "language":
            st["resume"] = resume if resume not in (None, "new") else None
        st["phase"], st["lang_proposed"] = "language", proposed
        key = "language_unsupported" if unsupported else "language_proposed"
        text = self.tr.t(proposed, key, language=self.tr.language_name(proposed))
        if proposed != "en":
            text += "\n" + self.tr.t("en", "language_menu")
        choices = tuple(Choice(lang, self.tr.language_name(lang), lang == proposed)
                        for lang in self.tr.languages)
        turn.replies.append(Reply(text, "language_menu", proposed, None, "language", choices))

    def _language_input(self, turn: Turn, inbound: Inbound, detection: Detection | None,
                        cmd: str | None) -> None:
        st = turn.state
        chosen = None
        if inbound.kind == "choice":
            chosen = (inbound.choice or "").lower()
        elif inbound.kind == "text":
            word = fold(normalize_digits(clean_text(inbound.text))).strip(" .")
            if word.isdigit() and 1 <= int(word) <= len(LANGUAGES):
                chosen = LANGUAGES[int(word) - 1]
            elif word in self._language_names:
                chosen = self._language_names[word]
            elif word in {"ok", "yes", "oui", "si", "sí", "да", "是", "نعم"} or word in \
                    self._done_words:
                chosen = st.get("lang_proposed")
            elif detection and detection.confident and not detection.other:
                chosen = detection.language
        if chosen not in LANGUAGES:
            self._show_language_menu(turn, st.get("lang_proposed") or "en", resume=None)
            return
        self._set_language(turn, chosen, explicit=inbound.kind == "choice" or cmd is None)
        resume = st.pop("resume", None) if "resume" in st else None
        st["resume"] = None
        if resume in ("asking", "review", "done", "cancelled"):
            st["phase"] = resume
            self._say(turn, "language_set", language=self.tr.language_name(chosen))
            self._prompt_current(turn)
        else:
            self._say(turn, "language_set", language=self.tr.language_name(chosen))
            self._begin(turn, datetime.min)

    def _set_language(self, turn: Turn, lang: str, explicit: bool) -> None:
        st = turn.state
        st["lang"], st["lang_explicit"] = lang, explicit or st.get("lang_explicit", False)
        turn.events.append({"type": "language", "language": lang, "explicit": explicit})

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
        if offered and typed.isdigit() and 1 <= int(typed) <= len(offered):
            self._record(turn, current, offered[int(typed) - 1])
            self._advance(turn, None if q.id in self._triggers else slots)
            return
        if q.type == "multi_choice" and fold(clean_text(text)) in self._done_words:
            self._finish_multi(turn, current, options, slots)
            return
        try:
            value = self.parser.parse(self.qn, q, text, st["lang"], options,
                                      self._value_getter(st["answers"], current.repeat))
        except AnswerError as err:
            turn.events.append({"type": "invalid", "slot": current.key, "reason": err.key})
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
        else:
            turn.events.append({"type": "invalid", "slot": slot.key, "reason": "bad_choice"})
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

    def _record(self, turn: Turn, slot: Slot, value: Any) -> None:
        st = turn.state
        st["answers"][slot.key] = value
        st["pending"] = []
        st.pop("offered", None)
        turn.events.append({"type": "answer", "slot": slot.key, "question": slot.question.id,
                            "repeat": slot.repeat, "value": value})

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

    def _review_items(self, slots: list[Slot], answers: dict[str, Any]) -> list[Slot]:
        return [s for s in slots if s.key in answers]

    def _try_edit(self, turn: Turn, text: str, slots: list[Slot]) -> bool:
        if len(text) > 40 or not any(ch.isdigit() for ch in text):
            return False
        m = _EDIT_RE.match(fold(normalize_digits(clean_text(text))).lstrip("/"))
        if not m or m.group(1) not in self._edit_words:
            return False
        words = [m.group(1), m.group(2)]  # "edit 3", and "编辑3" with no space
        st = turn.state
        items = self._review_items(slots, st["answers"])
        if not words[1].isdigit() or not 1 <= int(words[1]) <= len(items):
            self._say(turn, "error_edit_range", kind="error", n=words[1][:10],
                      count=len(items))
            self._prompt_current(turn)
            return True
        st["phase"], st["slot"], st["pending"] = "asking", items[int(words[1]) - 1].key, []
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
        live = {s.key for s in slots}
        for key in [k for k in st["answers"] if k not in live]:
            del st["answers"][key]
            qid, rep = split_slot(key)
            turn.events.append({"type": "answer_removed", "slot": key, "question": qid,
                                "repeat": rep})
        st["phase"], st["slot"] = "done", None
        st["submitted_at"] = now.isoformat()
        turn.events.append({"type": "submitted", "ref": st["ref"], "version": st["version"]})
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
        st["version"] += 1
        st["phase"], st["slot"], st["submitted_at"] = "review", None, None
        turn.events.append({"type": "amend", "ref": st["ref"], "version": st["version"]})
        self._say(turn, "amend_started", ref=st["ref"], version=st["version"])
        self._advance(turn)

    def _say_submitted(self, turn: Turn) -> None:
        st = turn.state
        lang = st["lang"] or "en"
        text = self.tr.t(lang, "already_submitted", ref=st["ref"])
        turn.replies.append(Reply(text, "info", lang, None, "done",
                                  (Choice(AMEND, self.tr.t(lang, "amend_button")),)))

    def _send_review(self, turn: Turn, slots: list[Slot], complete: bool) -> None:
        st = turn.state
        lang = st["lang"]
        lines = [self.tr.t(lang, "review_title")]
        section_seen = None
        for n, slot in enumerate(self._review_items(slots, st["answers"]), start=1):
            header = (slot.question.section, slot.repeat)
            if header != section_seen:
                section_seen = header
                title = self.tr.section_title(lang, self.qn, slot.question.section)
                if slot.repeat is not None:
                    title += " · " + self.tr.t(lang, "activity_label", n=slot.repeat + 1)
                lines.append(f"\n{title}")
            prompt = self.prompt_text(lang, slot, st["answers"])
            value = self.display_value(lang, slot.question, st["answers"][slot.key])
            lines.append(f"{n}. {prompt}\n   → {value}")
        if complete:
            lines.append("\n" + self.tr.t(lang, "review_footer"))
            choices = (Choice(SUBMIT, self.tr.t(lang, "submit_button")),)
        else:
            choices = ()
        turn.replies.append(Reply("\n".join(lines), "review", lang, None,
                                  "review" if complete else None, choices))

    # -- rendering ---------------------------------------------------------------------------

    def prompt_text(self, lang: str, slot: Slot, answers: dict[str, Any]) -> str:
        q = slot.question
        other_label = None
        if q.other_of:
            parent = self.qn.questions[q.other_of]
            value = self._value_getter(answers, slot.repeat)(q.other_of)
            free = [o.code for o in parent.options if o.free_text]
            chosen = [c for c in (value if isinstance(value, list) else [value]) if c in free]
            other_label = self.tr.option_label(lang, self.qn, parent, chosen[0] if chosen else
                                               free[0])
        return self.tr.question_prompt(lang, self.qn, q, other_label)

    def display_value(self, lang: str, q: Question, value: Any) -> str:
        if value is None:
            return self.tr.t(lang, "skipped_value")
        if q.type in ("single_choice", "yes_no"):
            return self.tr.option_label(lang, self.qn, q, value)
        # Option labels may hold commas ("电子学习、在线课程…"): the semicolon level joins them.
        if q.type == "multi_choice":
            return self.tr.raw(lang, "choice_list_sep").join(
                self.tr.option_label(lang, self.qn, q, c) for c in value)
        if q.type == "country":
            return self.tr.country_name(lang, value)
        if q.type == "multi_country":
            return self.tr.raw(lang, "mail_list_sep").join(
                self.tr.country_name(lang, c) for c in value)
        if q.type == "money":
            return f"{value['amount']} {value['currency']}"
        return str(value)

    def _prompt_current(self, turn: Turn) -> None:
        st = turn.state
        phase = st["phase"]
        if phase == "asking":
            self._ask(turn, self.slots(st["answers"]))
        elif phase == "review":
            self._advance(turn)
        elif phase == "done":
            self._say_submitted(turn)
        elif phase == "language":
            self._show_language_menu(turn, st.get("lang_proposed") or "en", resume=None)
        elif phase == "cancelled":
            self._say(turn, "cancelled")

    def _ask(self, turn: Turn, slots: list[Slot], repeat_prompt: bool = True) -> None:
        st = turn.state
        lang = st["lang"]
        slot = self._find(slots, st["slot"])
        if slot is None:
            self._advance(turn, slots)
            return
        q = slot.question
        answers = st["answers"]
        progress = self._progress(lang, slot)
        required = self.is_required(slot, answers)
        if q.other_of:
            parts = [progress, self.prompt_text(lang, slot, answers),
                     *self._static_hints(lang, q, required)]
        else:
            parts = [progress, *self._static_hints(lang, q, required)]
        options = self.options(slot, answers)
        previous = answers.get(slot.key)
        if slot.key in answers and previous is not None:
            parts.append("→ " + self.display_value(lang, q, previous))
        choices: tuple[Choice, ...] = ()
        if q.type in ("single_choice", "multi_choice", "yes_no"):
            pending = st["pending"]
            choices = tuple(Choice(code, label, code in pending)
                            for code, label in self._labels(lang, q, options))
            if q.type == "multi_choice":
                if pending:
                    names = self.tr.raw(lang, "choice_list_sep").join(
                        self.tr.option_label(lang, self.qn, q, c) for c in pending)
                    parts.append(self.tr.t(lang, "selected_so_far", options=names))
                choices += (Choice(DONE, self.tr.t(lang, "done_button")),)
        elif q.type == "country":
            choices = tuple(Choice(code, self.tr.country_name(lang, code))
                            for code in self._offered(st, slot))
        text = "\n".join(parts) if repeat_prompt else "\n".join(parts[1:])
        turn.replies.append(Reply(text, "question", lang, q.id, slot.key, choices,
                                  q.type == "multi_choice", progress))

    def _progress(self, lang: str, slot: Slot) -> str:
        """Part and question number from the questionnaire's fixed layout, so that progress
        only moves forward when a condition opens more questions."""
        q = slot.question
        part, number, total = self._positions[q.other_of or q.id]
        section = self.tr.section_title(lang, self.qn, q.section)
        if slot.repeat is not None:
            section += " · " + self.tr.t(lang, "activity_label", n=slot.repeat + 1)
        return self.tr.t(lang, "progress", part=part, parts=len(self.qn.sections),
                         section=section, n=number, total=total)

    def _labels(self, lang: str, q: Question,
                options: tuple[Option, ...]) -> tuple[tuple[str, str], ...]:
        key = (lang, q.id, options)
        found = self._label_cache.get(key)
        if found is None:
            found = self._label_cache[key] = tuple(
                (o.code, self.tr.option_label(lang, self.qn, q, o.code)) for o in options)
        return found

    def _static_hints(self, lang: str, q: Question, required: bool) -> tuple[str, ...]:
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
        hints.append(format_hint or self._format_hint(lang, q))
        if q.max_select and q.is_multi:
            hints.append(self.tr.tn(lang, "max_select_hint", q.max_select))
        if q.max_words:
            hints.append(self.tr.tn(lang, "word_limit_hint", length_limit(q.max_words, lang)))
        return hints

    def _format_hint(self, lang: str, q: Question) -> str:
        key = {"single_choice": "hint_single", "multi_choice": "hint_multi"}.get(
            q.type, f"hint_{q.type}")
        return self.tr.t(lang, key)

    def _say(self, turn: Turn, key: str, kind: str = "info", **values: Any) -> None:
        lang = turn.state["lang"] or "en"
        turn.replies.append(Reply(self.tr.t(lang, key, **values), kind, lang))  # type: ignore[arg-type]

    def error_text(self, lang: str, err: AnswerError) -> str:
        """The localized explanation of a refused answer; plural catalogs get the count."""
        if err.count is not None and isinstance(self.tr.raw(lang, err.key), dict):
            return self.tr.tn(lang, err.key, err.count, **err.values)
        if err.count is not None:
            return self.tr.t(lang, err.key, count=err.count, **err.values)
        return self.tr.t(lang, err.key, **err.values)

    def _error(self, turn: Turn, err: AnswerError) -> None:
        lang = turn.state["lang"] or "en"
        turn.replies.append(Reply(self.error_text(lang, err), "error", lang))


def _looks_like_list(text: str) -> bool:
    return bool(re.search(r"[,;，；、،؛\n]|\d\s+\d", normalize_digits(text)))
