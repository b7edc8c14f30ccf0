"""Sends committed replies to Telegram and keeps each chat a clean record of questions answered.

The outbox dispatcher calls `send(item)` for one reply at a time per chat, in order. Before the
first reply of a turn goes out, the question that turn answered is edited to show the answer and
lose its buttons; a multi-choice toggle edits its question in place. What the turn did (the
answers as shown, the pressed message) is in the reply's payload, written with it
(bot/turn_display.py, Inbound.reply_path), so any process sends a row the same way. Which message
carries the chat's current question is a cache in memory: lost on a restart, a question answered
by typed text keeps its old keyboard (a pressed one is still tidied, from the payload) —
Telegram's "message is not modified" and "message to edit not found" are expected there and
ignored.
"""

from __future__ import annotations

import asyncio
import html
import logging
import re
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from telegram import Bot, InputFile
from telegram.error import (
    BadRequest,
    ChatMigrated,
    Forbidden,
    InvalidToken,
    NetworkError,
    RetryAfter,
    TelegramError,
)

from bot.outbox import OutboxItem, PermanentSendError, TransientSendError
from handlers.telegram.request import call_json, retry_after_seconds
from handlers.telegram.translate import (
    UNKNOWN_SLOT,
    CallbackCodec,
    Outgoing,
    Pressed,
    answered_html,
    preformatted,
    render_reply,
)

logger = logging.getLogger(__name__)
T = TypeVar("T")
_NO_PREVIEW = {"is_disabled": True}  # answers may contain links: no preview cards
_HTML = "HTML"
_SEND, _EDIT_TEXT, _EDIT_MARKUP = "sendMessage", "editMessageText", "editMessageReplyMarkup"
_GONE = re.compile(r"(?i)chat not found|user is deactivated|bot was kicked|peer_id_invalid")
_HARMLESS_EDIT = re.compile(r"(?i)not modified|message to edit not found|can't be edited|"
                            r"message_id_invalid|there is no text|message can't be")
_TAGS = re.compile(r"<[^>]+>")


@dataclass(slots=True)
class SentQuestion:
    """The chat's current question (or menu) message, as sent."""

    message_id: int
    record_html: str  # how it reads once answered
    slot: str | None
    buttons: bool


@dataclass(frozen=True, slots=True)
class TurnHint:
    """What one turn did, as its replies' payloads carry it: used when they go out."""

    awaiting: str | None  # slot or phase the conversation waits for after the turn
    answered: dict[str, str]  # slot -> the answer as the respondent should read it
    pressed: Pressed | None = None
    stale: bool = False
    first: bool = False  # the turn's first reply: the one that tidies

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> TurnHint | None:
        turn = payload.get("turn")
        if not isinstance(turn, dict):
            return None  # not a turn's reply (a notice, a reminder), or written before hints
        return cls(turn.get("awaiting"), dict(turn.get("answered") or {}),
                   Pressed.from_json(payload.get("pressed")), bool(turn.get("stale")),
                   bool(turn.get("first")))


class TelegramSender:
    """One outbox row -> Bot API calls. Errors map to the dispatcher's: 429 waits retry_after
    and tries again (never dropped), network errors are transient, 403 is permanent."""

    def __init__(self, bot: Bot, codec: CallbackCodec, *, max_chats: int = 100_000) -> None:
        self.bot = bot
        self.codec = codec
        self.languages: dict[int, str] = {}  # chat -> language of the last reply
        # chat -> its current question: a cache (lost, an old keyboard stays in place).
        self._current: OrderedDict[int, SentQuestion] = OrderedDict()
        # Progress of a row being sent, kept across its transient retries.
        self._tidied: set[int] = set()  # outbox ids whose turn has been tidied
        self._parts_sent: dict[int, int] = {}  # outbox id -> parts already delivered
        self._max_chats = max_chats

    # -- the dispatcher's entry point ---------------------------------------------------------

    async def send(self, item: OutboxItem) -> None:
        try:
            await self._send(item)
        except TransientSendError:
            raise  # tried again by the dispatcher: keep the progress
        except BaseException:
            self._forget(item.id)
            raise
        self._forget(item.id)

    def _forget(self, item_id: int) -> None:
        self._tidied.discard(item_id)
        self._parts_sent.pop(item_id, None)

    async def _send(self, item: OutboxItem) -> None:
        chat = int(item.address)
        payload = item.payload
        if payload.get("format") == "pre":  # statistics tables
            await self._send_parts(item, chat, [Outgoing(h) for h in preformatted(
                str(payload.get("text") or ""))])
            return
        if payload.get("language"):
            self.languages[chat] = payload["language"]
        hint = TurnHint.from_payload(payload)
        if hint is not None and hint.first and item.id not in self._tidied:
            await self._tidy(chat, hint)
            self._tidied.add(item.id)
        rendered = render_reply(payload, self.codec)
        last = rendered.parts[-1]
        pressed = hint.pressed if hint is not None and not hint.stale else None
        # A toggle of a multi-choice question: show the check marks where they were pressed.
        if (pressed is not None and payload.get("multi") and rendered.slot == pressed.slot
                and len(rendered.parts) == 1
                and await self._edit(chat, pressed.message_id, last.html, last.reply_markup)):
            current = self._current.get(chat)
            if current is not None and current.buttons and \
                    current.message_id != pressed.message_id:  # an older copy was pressed
                await self._strip(chat, current.message_id)
            self._remember(chat, SentQuestion(pressed.message_id, last.record_html,
                                              rendered.slot, True))
            return
        current = self._current.get(chat)
        if rendered.has_buttons and current is not None and current.buttons:
            await self._strip(chat, current.message_id)  # superseded by the new keyboard
            current.buttons = False
        message_id = await self._send_parts(item, chat, list(rendered.parts))
        if rendered.slot is not None or rendered.has_buttons:
            self._remember(chat, SentQuestion(message_id, last.record_html, rendered.slot,
                                              rendered.has_buttons))

    # -- tidying the previous question -----------------------------------------------------------

    async def _tidy(self, chat: int, hint: TurnHint) -> None:
        current = self._current.get(chat)
        pressed = hint.pressed
        if pressed is not None:
            known = current is not None and current.message_id == pressed.message_id
            if hint.stale or pressed.slot == UNKNOWN_SLOT:
                await self._strip(chat, pressed.message_id)
                if known:
                    current.buttons = False  # type: ignore[union-attr]
            elif pressed.slot != hint.awaiting:  # answered: moved on
                record = current.record_html if known else pressed.record_html()  # type: ignore[union-attr]
                display = hint.answered.get(pressed.slot or "") or pressed.label or ""
                await self._close(chat, pressed.message_id, record, display)
                if known:
                    self._current.pop(chat, None)
            return
        if current is None or current.slot is None or current.slot == hint.awaiting:
            return
        display = hint.answered.get(current.slot)
        if display is not None:
            await self._close(chat, current.message_id, current.record_html, display)
            self._current.pop(chat, None)
        elif current.buttons:  # moved elsewhere (/back, /review...): old buttons go
            await self._strip(chat, current.message_id)
            current.buttons = False

    async def _close(self, chat: int, message_id: int, record: str, display: str) -> None:
        text = answered_html(record, display) if display and record else None
        if text is None or not await self._edit(chat, message_id, text, None):
            await self._strip(chat, message_id)

    def _remember(self, chat: int, sent: SentQuestion) -> None:
        self._current[chat] = sent
        self._current.move_to_end(chat)
        if len(self._current) > self._max_chats:
            self._current.popitem(last=False)

    # -- Bot API calls -------------------------------------------------------------------------

    async def _send_parts(self, item: OutboxItem, chat: int, parts: list[Outgoing]) -> int:
        message_id = 0
        start = self._parts_sent.get(item.id, 0)
        for index in range(start, len(parts)):
            message_id = await self._send_message(chat, parts[index])
            self._parts_sent[item.id] = index + 1
        return message_id

    async def api(self, method: str, **params: Any) -> Any:
        """The conversation's messages as plain JSON (request.call_json), errors mapped."""
        return await self.call(call_json, self.bot, method, params)

    async def _send_message(self, chat: int, part: Outgoing) -> int:
        markup = part.reply_markup
        try:
            message = await self.api(_SEND, chat_id=chat, text=part.html, parse_mode=_HTML,
                                     reply_markup=markup, link_preview_options=_NO_PREVIEW)
        except BadRequest as exc:
            text = str(exc).lower()
            if "parse entities" in text:  # a rendering bug must not silence the bot
                logger.error("chat %s: HTML refused (%s); sending plain text", chat, exc)
                plain = html.unescape(_TAGS.sub("", part.html))
                message = await self.api(_SEND, chat_id=chat, text=plain, reply_markup=markup)
            elif markup is not None and ("button" in text or "markup" in text):
                logger.error("chat %s: keyboard refused (%s); sending without it", chat, exc)
                message = await self.api(_SEND, chat_id=chat, text=part.html,
                                         parse_mode=_HTML)
            else:
                raise
        return int(message["message_id"])

    async def _edit(self, chat: int, message_id: int, text: str,
                    markup: dict[str, Any] | None) -> bool:
        try:
            await self.api(_EDIT_TEXT, chat_id=chat, message_id=message_id, text=text,
                           parse_mode=_HTML, reply_markup=markup,
                           link_preview_options=_NO_PREVIEW)
        except BadRequest as exc:
            if not _HARMLESS_EDIT.search(str(exc)):
                logger.warning("chat %s: cannot edit message %s: %s", chat, message_id, exc)
            return "not modified" in str(exc).lower()
        return True

    async def _strip(self, chat: int, message_id: int) -> None:
        try:
            await self.api(_EDIT_MARKUP, chat_id=chat, message_id=message_id)
        except BadRequest as exc:
            if not _HARMLESS_EDIT.search(str(exc)):
                logger.warning("chat %s: cannot remove buttons of %s: %s", chat, message_id,
                               exc)

    async def answer_query(self, query_id: str) -> None:
        """Stops a pressed button's spinner."""
        await self.call(self.bot.answer_callback_query, query_id)

    async def send_document(self, chat: int, data: bytes, filename: str, caption: str,
                            *, attempts: int = 5) -> None:
        """A file (the export): not an outbox row, so retried here a few times."""
        for attempt in range(1, attempts + 1):
            try:
                await self.call(self.bot.send_document, chat, InputFile(data, filename=filename),
                                caption=caption[:1024])
                return
            except TransientSendError:
                if attempt == attempts:
                    raise
                await asyncio.sleep(min(30.0, 0.5 * 2 ** attempt))

    async def send_text(self, chat: int, text: str) -> None:
        """A plain note outside the outbox (used when the database is what failed)."""
        await self.call(self.bot.send_message, chat, text)

    async def call(self, method: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        """One Bot API call with Telegram's errors mapped; a 429 waits and tries again."""
        while True:
            try:
                return await method(*args, **kwargs)
            except RetryAfter as exc:
                delay = retry_after_seconds(exc)
                logger.info("flood control: waiting %.1fs before retrying", delay)
                await asyncio.sleep(delay + 0.05)
            except Forbidden as exc:  # blocked by the user, or kicked
                raise PermanentSendError(str(exc)) from exc
            except ChatMigrated as exc:
                raise PermanentSendError(f"chat migrated to {exc.new_chat_id}") from exc
            except BadRequest as exc:
                if _GONE.search(str(exc)):
                    raise PermanentSendError(str(exc)) from exc
                raise
            except InvalidToken:
                raise
            except NetworkError as exc:  # includes TimedOut
                raise TransientSendError(f"{type(exc).__name__}: {exc}") from exc
            except TelegramError as exc:
                if "server error" in str(exc).lower() or "bad gateway" in str(exc).lower():
                    raise TransientSendError(str(exc)) from exc
                raise
