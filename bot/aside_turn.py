"""Short dialogs beside the questionnaire: /email (go on by mail) and /stop (opt out) (mixin).

Pure, like the rest of the engine (bot/engine.py mixes it in). Each asks one confirmation,
kept in `state["aside"]`, and ends in a typed event that the service acts on: `EmailRequested`
(bind the address, send the remaining questions as the email form) or `OptedOut` (no more
reminders). The questionnaire's own place (phase, slot, answers) is never touched, so the
conversation resumes exactly where it was; any other command leaves the dialog.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bot.answers import AnswerError, yes_no_word
from bot.events import EmailRequested, OptedOut
from bot.messages import Choice, Inbound, Reply

if TYPE_CHECKING:
    from bot.engine import Engine, Turn

ASIDES = ("email", "stop")


class AsideTurns:
    """Mixed into Engine: the /email and /stop confirmations."""

    def _aside_open(self: Engine, turn: Turn, inbound: Inbound, cmd: str) -> None:
        st = turn.state
        if cmd == "stop":
            st["aside"] = {"kind": "stop"}
            self._aside_confirm(turn, "stop", "stop_confirm")
            return
        known = inbound.known_email
        if known:
            st["aside"] = {"kind": "email", "stage": "confirm", "address": known}
            self._aside_confirm(turn, "email", "email_confirm", address=known)
        else:
            st["aside"] = {"kind": "email", "stage": "ask"}
            self._aside_ask(turn)

    def _aside_input(self: Engine, turn: Turn, inbound: Inbound, cmd: str | None) -> bool:
        """An answer within a dialog; False when the input leaves it (a command)."""
        st = turn.state
        aside: dict[str, Any] = st["aside"]
        if cmd is not None or inbound.kind not in ("text", "choice"):
            st.pop("aside", None)
            return False
        kind = aside["kind"]
        if inbound.kind == "choice":
            if inbound.for_slot != kind:  # an older question's button: leave the dialog
                st.pop("aside", None)
                return False
            word = (inbound.choice or "").upper()
        else:
            word = yes_no_word(inbound.text) or ""
        if kind == "stop":
            if word not in ("YES", "NO"):
                self._aside_confirm(turn, "stop", "stop_confirm")
                return True
            st.pop("aside")
            if word == "YES":
                turn.events.append(OptedOut())
                self._say(turn, "stopped")
            else:
                self._say(turn, "stop_kept")
                self._prompt_current(turn)
            return True
        if aside.get("stage") == "confirm" and word in ("YES", "NO"):
            if word == "YES":
                st.pop("aside")
                turn.events.append(EmailRequested(aside["address"]))
            else:
                st["aside"] = {"kind": "email", "stage": "ask"}
                self._aside_ask(turn)
            return True
        if inbound.kind == "choice":
            self._aside_ask(turn)
            return True
        try:
            address = self.parser.parse_address(inbound.text[:400])
        except AnswerError as err:
            self._error(turn, err)
            self._aside_ask(turn)
            return True
        st.pop("aside")
        turn.events.append(EmailRequested(address))
        return True

    # -- what the service sends once it acted on EmailRequested ------------------------------

    def email_form_reply(self: Engine, state: dict[str, Any], thread: dict[str, Any]) -> Reply:
        """The email form of the questions still to answer, as the email channel sends it
        (with the report's reference, so the reply token leads back to this draft)."""
        from bot.engine import Turn

        turn = Turn(state)
        inbound = Inbound("email", "", thread["message_id"], "form", reply_path={"thread": thread})
        self._form_reply(turn, inbound, {"show": "form", "remaining": True,
                                         "offer_languages": False,
                                         "notes": [["continued", {}]]}, reply=False)
        return turn.replies[0]

    def after_email(self: Engine, state: dict[str, Any], key: str, **values: Any
                    ) -> list[Reply]:
        """The chat's note on /email (sent, or why not), then the current question again."""
        from bot.engine import Turn

        turn = Turn({**state, "answers": dict(state["answers"])})
        self._say(turn, key, **values)
        self._prompt_current(turn)
        return turn.replies

    def _aside_confirm(self: Engine, turn: Turn, kind: str, key: str, **values: Any) -> None:
        lang = turn.state["lang"] or "en"
        choices = (Choice("YES", self.tr.t(lang, "yes")), Choice("NO", self.tr.t(lang, "no")))
        turn.replies.append(Reply(self.tr.t(lang, key, **values), "question", lang, None, kind,
                                  choices))

    def _aside_ask(self: Engine, turn: Turn) -> None:
        lang = turn.state["lang"] or "en"
        turn.replies.append(Reply(self.tr.t(lang, "email_ask"), "question", lang, None,
                                  "email"))


__all__ = ["ASIDES", "AsideTurns"]
