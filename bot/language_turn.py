"""First contact and the language menu: the engine's start and language transitions (mixin).

Pure, like the rest of the engine (bot/engine.py mixes it in). A chat starts in the stored
language, else a confidently detected one, else it proposes the channel's hint in a menu.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from bot.answers import as_index, clean_text, normalize_digits
from bot.events import LanguageChanged
from bot.i18n import LANGUAGES, fold
from bot.language import Detection, normalize_language_tag
from bot.messages import Inbound

if TYPE_CHECKING:
    from bot.engine import Engine, Turn


class LanguageTurns:
    """Mixed into Engine: starting a conversation, choosing its language."""

    def _start(self: Engine, turn: Turn, inbound: Inbound, detection: Detection | None,
               now: datetime) -> None:
        st = turn.state
        if st["phase"] == "done":
            self._say_submitted(turn)
            return
        if st["phase"] == "cancelled":
            self._resume(turn)
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

    def _begin(self: Engine, turn: Turn, now: datetime) -> None:
        self._started(turn)
        self._say(turn, "welcome")
        self._advance(turn)

    def _language_input(self: Engine, turn: Turn, inbound: Inbound, detection: Detection | None,
                        cmd: str | None) -> None:
        st = turn.state
        chosen = None
        if inbound.kind == "choice":
            chosen = (inbound.choice or "").lower()
        elif inbound.kind == "text":
            word = fold(normalize_digits(clean_text(inbound.text))).strip(" .")
            index = as_index(word)
            if index is not None and 1 <= index <= len(LANGUAGES):
                chosen = LANGUAGES[index - 1]
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

    def _set_language(self: Engine, turn: Turn, lang: str, explicit: bool) -> None:
        st = turn.state
        st["lang"], st["lang_explicit"] = lang, explicit or st.get("lang_explicit", False)
        turn.events.append(LanguageChanged(lang, explicit))
