"""What one turn did, as the respondent should read it, carried on the turn's replies.

A chat channel tidies the conversation when a turn's replies go out: the question just answered
is rewritten to show the answer and loses its buttons. What that needs is written into each
reply's outbox payload (key "turn") in the same commit as the reply, so a restarted process or
another replica sends the row with the same display. Pure: no I/O, used inside the turn's
transaction.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from bot.engine import awaiting_key
from bot.events import Amended, AnswerRecorded, LanguageChanged, Stale, Submitted

if TYPE_CHECKING:
    from bot.engine import Engine

logger = logging.getLogger(__name__)


def turn_display(engine: Engine, state: dict[str, Any], events: list[Any]) -> dict[str, Any]:
    """{"awaiting": slot or phase waited for after the turn, "answered": slot -> the answer
    as shown, "stale": a button of an earlier question was pressed}."""
    lang = state.get("lang") or "en"
    tr = engine.tr
    answered: dict[str, str] = {}
    stale = False
    for event in events:
        try:
            if isinstance(event, AnswerRecorded):
                question = engine.qn.questions[event.question]
                answered[event.slot] = engine.display_value(lang, question, event.value)
            elif isinstance(event, LanguageChanged):
                answered["language"] = tr.language_name(event.language)
            elif isinstance(event, Submitted):
                answered["review"] = tr.t(lang, "submit_button")
            elif isinstance(event, Amended):
                answered["done"] = tr.t(lang, "amend_button")
            elif isinstance(event, Stale):
                stale = True
        except Exception:  # a display problem must not cost the turn
            logger.exception("cannot display event %s", getattr(event, "type", event))
    return {"awaiting": awaiting_key(state) if state else None, "answered": answered,
            "stale": stale}
