"""The engine's turn for a form inbound: an email reply with several numbered answers at once.

Part of the one state machine (bot/engine.py mixes it in): entries are recorded, validated,
skipped and refused through the engine's own transitions (`_record`, `_finish`, `_amend`,
`_cancel`, `_resume`, `_set_language`) and the one condition evaluator (bot/rules.py). The
turn returns the normal state and events, a neutral `FormOutcome` (recorded, rejected with
reasons, missing, optional left), and replies whose `extra["form"]` says what to show; the
email channel renders them as a form, a digest, a receipt or a notice.

Policy held here: the language of a first mail (bot.language.resolve_language: explicit →
confident detection → stored → hint); a delegate (someone replying for the report's owner)
may answer but not submit, cancel, amend or change the language, and the owner is told;
recipients over the daily reply cap (`Inbound.muted`) get no reply, the answers are kept.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from bot.answers import AnswerError
from bot.events import Delegated
from bot.language import Detection, resolve_language
from bot.messages import Inbound, Reply
from bot.rules import Slot, slot_key, value_getter

if TYPE_CHECKING:
    from bot.engine import Engine, Turn

SKIP = "/skip"  # an entry that leaves its question unanswered (the reader's "-")
_OWNER_ONLY = ("submit", "cancel", "language", "amend")
_UNSET: Any = object()


@dataclass(frozen=True, slots=True)
class Recorded:
    slot: str
    value: Any
    previous: Any = _UNSET  # the answer it replaced, when it changed one

    def to_json(self) -> dict[str, Any]:
        out = {"slot": self.slot, "value": self.value}
        if self.previous is not _UNSET:
            out["previous"] = self.previous
        return out


@dataclass(frozen=True, slots=True)
class Rejected:
    label: str  # the number as written: "8", "2.8", "99"
    slot: str | None  # None: there is no such question
    text: str  # what was written (shortened)
    reason: str  # "no_question" | "not_applicable" | "invalid"
    error: str = ""  # for "invalid": the localized explanation

    def to_json(self) -> dict[str, Any]:
        return {"label": self.label, "slot": self.slot, "text": self.text,
                "reason": self.reason, "error": self.error}


@dataclass(slots=True)
class FormOutcome:
    """What one form inbound's entries came to: the digest's content, channel-neutral."""

    recorded: list[Recorded] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # required, unanswered (slot keys)
    optional_left: list[str] = field(default_factory=list)  # optional, never answered

    def to_json(self) -> dict[str, Any]:
        return {"recorded": [r.to_json() for r in self.recorded],
                "rejected": [r.to_json() for r in self.rejected],
                "missing": self.missing, "optional_left": self.optional_left}


class FormTurns:
    """Mixed into Engine: the form inbound's turn."""

    def _form_turn(self: Engine, turn: Turn, inbound: Inbound, now: datetime,
                   detection: Detection | None) -> None:
        st = turn.state
        st["pending"] = []
        commands = dict(inbound.commands)
        notes: list[list[Any]] = []  # [code, values]: rendered by the channel
        delegate = inbound.delegate
        first = st["phase"] in ("new", "language")
        unsure = self._form_start(turn, detection, inbound.language_hint) if first else False
        if delegate:
            turn.events.append(Delegated(delegate, st["ref"]))
            owner_only = [c for c in _OWNER_ONLY if c in commands]
            for c in owner_only:
                del commands[c]
            if owner_only:
                notes.append(["delegate_owner_only", {}])
        if "language" in commands:
            code = commands.pop("language")
            commands.setdefault("status", "")
            if code in self.tr.languages:
                self._set_language(turn, code, explicit=True)
                notes.append(["language_set", {"language": code}])
            else:
                unsure = True
        outcome = turn.outcome = FormOutcome()
        if st["phase"] == "cancelled" and commands.keys() != {"cancel"}:
            self._resume(turn)
            st["resume"] = None
            notes.append(["welcome_back", {}])
        if st["phase"] == "cancelled":  # "cancel" again: still paused
            self._form_reply(turn, inbound, {"show": "notice", "notice": "cancelled"},
                             to=delegate)
            return
        if st["phase"] == "done":
            if "amend" not in commands:
                self._form_reply(turn, inbound, {"show": "notice",
                                                 "notice": "already_submitted"}, to=delegate)
                return
            self._amend(turn)
            notes.append(["amend_started", {"ref": st["ref"], "version": st["version"]}])
        self._apply_entries(turn, inbound.entries, outcome)
        missing, optional_left = self.rules.missing(st["answers"])
        outcome.missing = [s.key for s in missing]
        outcome.optional_left = [s.key for s in optional_left]
        complete = not missing
        if st["phase"] in ("asking", "review"):
            st["phase"] = "review" if complete else "asking"
            st["slot"] = missing[0].key if missing else None
        changed = bool(outcome.recorded or outcome.rejected)
        if "cancel" in commands and st["phase"] in ("asking", "review"):
            self._cancel(turn)
            self._form_reply(turn, inbound, {"show": "notice", "notice": "cancelled",
                                             "results": changed})
            return
        if "submit" in commands:
            if complete and not outcome.rejected:
                self._finish(turn, now)
                self._form_reply(turn, inbound, {"show": "receipt"})
                return
            notes.append(["not_sent_errors" if outcome.rejected else "not_sent_missing", {}])
        if (first and not inbound.entries) or "status" in commands:
            if complete and st["phase"] == "review":
                notes.append(["complete", {}])
            view = {"show": "form", "offer_languages": first or unsure, "offers_first": unsure}
        else:
            view = {"show": "digest", "offer_languages": first,
                    "found_nothing": not inbound.entries and not commands}
        view["notes"] = notes
        if not delegate:
            self._form_reply(turn, inbound, view)
            return
        self._form_reply(turn, inbound, {**view, "delegate_ack": True}, to=delegate)
        if changed:
            self._form_reply(turn, inbound, {
                "show": "digest", "notes": [["delegate_notice", {"address": delegate}]]},
                reply=False, index=1)

    def _form_start(self: Engine, turn: Turn, detection: Detection | None,
                    hint: str | None) -> bool:
        """First mail: pick the language (explicit, else a confident detection, else the
        hint), start; True when the language is a guess (the other languages are offered)."""
        st = turn.state
        unsure = False
        if not st["lang"]:
            lang, unsure = resolve_language(stored=None, explicit=False, hint=hint,
                                            detection=detection)
            self._set_language(turn, lang if lang in self.tr.languages else "en", False)
        self._started(turn)
        st["slot"] = None
        return unsure

    def _form_reply(self: Engine, turn: Turn, inbound: Inbound, view: dict[str, Any], *,
                    to: str | None = None, reply: bool = True, index: int = 0) -> None:
        """One reply of the turn (index: its place among the turn's mails); none to a
        recipient over today's cap (`muted`): the answers are kept all the same."""
        st = turn.state
        if (to or inbound.user_id) in inbound.muted:
            return
        show = view["show"]
        outcome = turn.outcome or FormOutcome()
        view = {**view, "outcome": outcome.to_json(),
                "state": {k: st.get(k) for k in ("questionnaire", "ref", "lang", "version",
                                                 "phase", "answers")}}
        kind = {"receipt": "receipt", "notice": "info"}.get(
            show, "review" if show == "digest" and not outcome.missing else "question")
        lang = st["lang"] or "en"
        text = self.tr.t(lang, "submitted", ref=st["ref"], version=st["version"]) \
            if show == "receipt" else ""
        extra = {**(inbound.reply_path or {}), "form": view, "ref": st["ref"], "to": to,
                 "reply": reply, "index": index}
        turn.replies.append(Reply(text, kind, lang, extra=extra))  # type: ignore[arg-type]

    def _apply_entries(self: Engine, turn: Turn, entries: tuple[tuple[str, str], ...],
                       outcome: FormOutcome) -> None:
        st = turn.state
        answers = st["answers"]
        latest: dict[str, tuple[str, str, Any, int | None]] = {}
        for label, text in entries:
            where = self.numbering.resolve_label(label)
            if where is None:
                outcome.rejected.append(Rejected(label, None, _shorten(text), "no_question"))
                continue
            numbered, rep = where
            key = slot_key(numbered.question.id, rep)
            latest.pop(key, None)  # the last one written wins
            latest[key] = (label, text, numbered, rep)
        ordered = sorted(latest.items(), key=lambda kv: (kv[1][2].section_index,
                                                         kv[1][3] or 0, kv[1][2].number))
        for key, (_, text, numbered, rep) in ordered:
            if not text:  # the form's question line, left unanswered
                continue
            q, section = numbered.question, numbered.section
            slot = Slot(key, q, rep)
            label = self.numbering.label(q.id, rep)
            section_off = self.rules.section_applies(section, answers, {}) is False
            if rep and (section_off or not self._open_block(turn, section.more_question, rep,
                                                            outcome)):
                outcome.rejected.append(Rejected(label, key, _shorten(text), "not_applicable"))
                continue
            if self.rules.applies(q.id, rep, answers, {}) is False:
                outcome.rejected.append(Rejected(label, key, _shorten(text), "not_applicable"))
                continue
            try:
                value = self._parse_entry(turn, slot, text)
            except AnswerError as err:
                self._invalid(turn, slot, err.key)
                outcome.rejected.append(Rejected(label, key, _shorten(text), "invalid",
                                                 self.error_text(st["lang"], err)))
                continue
            previous = answers.get(key, _UNSET)
            if previous != value:
                self._record(turn, slot, value)
            outcome.recorded.append(Recorded(key, value, previous if previous is not _UNSET
                                             and previous != value else _UNSET))

    def _open_block(self: Engine, turn: Turn, more: str | None, rep: int,
                    outcome: FormOutcome) -> bool:
        """Answers for instance k+1 say "yes, another one": open the instances up to it."""
        answers = turn.state["answers"]
        if more is None:
            return False
        keys = [slot_key(more, j) for j in range(rep)]
        if any(answers.get(k) not in (None, "YES") for k in keys):
            return False  # "No, no other activity" was answered
        for j, key in enumerate(keys):
            if answers.get(key) != "YES":
                self._record(turn, Slot(key, self.qn.questions[more], j), "YES")
                outcome.recorded.append(Recorded(key, "YES"))
        return True

    def _parse_entry(self: Engine, turn: Turn, slot: Slot, text: str) -> Any:
        st = turn.state
        q = slot.question
        answers = st["answers"]
        if text == SKIP:
            if self.is_required(slot, answers):
                raise AnswerError("error_required")
            return None
        options = q.options
        if q.options_from:  # numbers and names of the full list: they do not move
            options = self.qn.questions[q.options_from].options
        value = self.parser.parse(self.qn, q, text, st["lang"], options,
                                  value_getter(answers, slot.repeat))
        if q.options_from:
            allowed = value_getter(answers, slot.repeat)(q.options_from) or []
            outside = [c for c in value if c not in allowed]
            if outside:
                label = self.tr.option_label(st["lang"], self.qn, q, outside[0])
                raise AnswerError("mail_error_not_chosen", text=label,
                                  n=self.numbering.label(q.options_from, slot.repeat))
        if isinstance(value, list) and q.type == "multi_choice":
            order = {o.code: i for i, o in enumerate(options)}
            value = sorted(value, key=lambda c: order.get(c, 99))
        return value


def _shorten(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


__all__ = ["SKIP", "FormOutcome", "FormTurns", "Recorded", "Rejected"]
