"""Recognizing an unsubscribe request by mail (pure).

Two forms: the List-Unsubscribe mailto of our mail (subject "unsubscribe <token>", sent by
the mail client), and a person writing the localized word alone ("unsubscribe",
"désabonner", "darse de baja", "отписаться", "退订", "إلغاء الاشتراك") as the subject or as
the first line of the reply. A word inside a sentence or an answer is not a request: an
answer must never be taken for an opt-out.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from bot.answers import clean_text
from bot.i18n import fold

from .form_reader import bare_subject

_STRIP = " .!¡?¿:;,。！：«»\"'“”"


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    language: str  # the language of the word written: the notice's language
    token: str | None  # what followed the word in the subject (List-Unsubscribe), unverified


def unsubscribe_words(words: Mapping[str, str]) -> dict[str, str]:
    """folded word -> language, from each language's catalog word; English always."""
    found = {fold(word).strip(_STRIP): lang for lang, word in words.items()}
    found.setdefault("unsubscribe", "en")
    return found


def unsubscribe_request(subject: str, reply_text: str,
                        words: Mapping[str, str]) -> Unsubscribe | None:
    """The request this mail makes, or None. `words`: from unsubscribe_words."""
    folded = fold(clean_text(bare_subject(subject or ""))).strip(_STRIP)
    for word, lang in words.items():
        if folded == word:
            return Unsubscribe(lang, None)
        head, _, rest = folded.partition(" ")
        if word == "unsubscribe" and head == word and rest and " " not in rest.strip():
            return Unsubscribe(lang, rest.strip())
    first = next((line for line in (reply_text or "").splitlines() if line.strip()), "")
    line = fold(clean_text(first)).strip(_STRIP)
    lang = words.get(line)
    return Unsubscribe(lang, None) if lang else None


__all__ = ["Unsubscribe", "unsubscribe_request", "unsubscribe_words"]
