"""Neutral inbound and outbound messages shared by the engine, the service and every channel."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from bot.language import Detection

InboundKind = Literal["start", "text", "choice", "unsupported", "form"]
ReplyKind = Literal["question", "info", "error", "review", "receipt", "language_menu"]


@dataclass(frozen=True, slots=True)
class Inbound:
    """One message from a respondent, already translated from the channel's payload."""

    channel: str  # "console" | "telegram" | "email"
    user_id: str  # channel-scoped id: Telegram chat id, normalized email address, console user
    message_id: str  # channel-unique id (Telegram update id, email Message-ID) for de-duplication
    kind: InboundKind = "text"
    text: str = ""
    choice: str | None = None  # option code of a pressed button
    for_slot: str | None = None  # slot key the pressed button belonged to (stale-press check)
    payload: str | None = None  # /start deep-link payload
    language_hint: str | None = None  # Telegram language_code, email Content-Language
    display_name: str | None = None
    raw: str = ""  # raw payload, kept verbatim in the inbound log
    # kind "form" (an email reply): numbered answers as written, ("8" or "2.8", text), text
    # "" for a question line left unanswered; and command words, (name, argument):
    # submit / amend / status / cancel, language -> a code or "".
    entries: tuple[tuple[str, str], ...] = ()
    commands: tuple[tuple[str, str], ...] = ()
    delegate: str | None = None  # someone answering for the owner (user_id), by email
    muted: frozenset[str] = frozenset()  # addresses not to answer this turn (daily reply cap)
    # Channel data handed back on every reply's extra (email threading); never read by the
    # engine.
    reply_path: Mapping[str, Any] | None = field(default=None, compare=False)
    detection: Detection | None = None  # the text's language, when the channel detected it
    # The respondent's e-mail address as the service knows it (set for /email, to confirm).
    known_email: str | None = None

    def __post_init__(self) -> None:
        # Lone surrogates (undecodable bytes read with surrogateescape) cannot be stored or
        # sent anywhere: replace them here, for every channel, rather than fail the turn.
        for name in ("text", "raw", "display_name"):
            value = getattr(self, name)
            if value and not _encodable(value):
                object.__setattr__(self, name, clean_text(value))


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def clean_text(text: str) -> str:
    """The text with anything UTF-8 cannot carry replaced by U+FFFD."""
    return text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")


@dataclass(frozen=True, slots=True)
class Choice:
    code: str
    label: str
    selected: bool = False


@dataclass(frozen=True, slots=True)
class Reply:
    """One message from the bot; adapters render it (buttons, numbered lists, JSON)."""

    text: str
    kind: ReplyKind = "info"
    language: str = "en"
    question: str | None = None  # question id being asked, if any
    slot: str | None = None  # question id + repeat index, e.g. "A1_title@1"
    choices: tuple[Choice, ...] = field(default_factory=tuple)
    multi: bool = False
    progress: str | None = None  # "Question 7 of 24 — About you", already localized
    # Channel-specific fields merged into the outbox payload (email: subject, html, threading).
    extra: Mapping[str, Any] | None = field(default=None, compare=False)
