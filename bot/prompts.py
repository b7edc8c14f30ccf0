"""The replies a conversation sends: questions, the review, the language menu (engine mixin).

Pure, like the rest of the engine (bot/engine.py mixes it in): each method appends
neutral `Reply` objects to the turn; channels render them (buttons, numbered lists).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bot.messages import Choice, Reply

if TYPE_CHECKING:
    from bot.answers import AnswerError
    from bot.engine import Engine, Turn
    from bot.rules import Slot

DONE, SUBMIT, AMEND = "DONE", "SUBMIT", "AMEND"


class Prompts:
    """Mixed into Engine: building the replies of a chat turn."""

    def _show_language_menu(self: Engine, turn: Turn, proposed: str, resume: str | None,
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

    def _say_submitted(self: Engine, turn: Turn) -> None:
        st = turn.state
        lang = st["lang"] or "en"
        text = self.tr.t(lang, "already_submitted", ref=st["ref"])
        turn.replies.append(Reply(text, "info", lang, None, "done",
                                  (Choice(AMEND, self.tr.t(lang, "amend_button")),)))

    def _send_review(self: Engine, turn: Turn, slots: list[Slot], complete: bool) -> None:
        st = turn.state
        lang = st["lang"]
        lines = [self.tr.t(lang, "review_title")]
        section_seen = None
        for n, slot in enumerate(self._review_items(slots, st["answers"]), start=1):
            header = (slot.question.section, slot.repeat)
            if header != section_seen:
                section_seen = header
                lines.append(f"\n{self.display.section_header(lang, slot)}")
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

    def _prompt_current(self: Engine, turn: Turn) -> None:
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

    def _ask(self: Engine, turn: Turn, slots: list[Slot], repeat_prompt: bool = True) -> None:
        st = turn.state
        lang = st["lang"]
        slot = self._find(slots, st["slot"])
        if slot is None:
            self._advance(turn, slots)
            return
        q = slot.question
        answers = st["answers"]
        progress = self.display.progress(lang, slot)
        required = self.is_required(slot, answers)
        if q.other_of:
            parts = [progress, self.prompt_text(lang, slot, answers),
                     *self.display.static_hints(lang, q, required)]
        else:
            parts = [progress, *self.display.static_hints(lang, q, required)]
        options = self.options(slot, answers)
        previous = answers.get(slot.key)
        if slot.key in answers and previous is not None:
            parts.append("→ " + self.display_value(lang, q, previous))
        choices: tuple[Choice, ...] = ()
        if q.type in ("single_choice", "multi_choice", "yes_no"):
            pending = st["pending"]
            choices = tuple(Choice(code, label, code in pending)
                            for code, label in self.display.labels(lang, q, options))
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

    def _say(self: Engine, turn: Turn, key: str, kind: str = "info", **values: Any) -> None:
        lang = turn.state["lang"] or "en"
        turn.replies.append(Reply(self.tr.t(lang, key, **values), kind, lang))  # type: ignore[arg-type]

    def _error(self: Engine, turn: Turn, err: AnswerError) -> None:
        lang = turn.state["lang"] or "en"
        turn.replies.append(Reply(self.error_text(lang, err), "error", lang))

    def _review_items(self, slots: list[Slot], answers: dict[str, Any]) -> list[Slot]:
        return [s for s in slots if s.key in answers]
