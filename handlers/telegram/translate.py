"""Pure translation between Telegram's JSON and capbot's neutral messages (no I/O, no PTB).

Inbound: one Bot API update (as JSON) becomes a `TelegramEvent`: a neutral `Inbound` for the
engine, or a route the channel handles itself (group chat, admin command, edited message...).
Outbound: one reply payload (`bot.service.reply_to_payload`) becomes one or more `Outgoing`
messages: HTML-escaped text within Telegram's 4096-character limit and an inline keyboard whose
callback_data fits in 64 bytes.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from bot.i18n import LANGUAGES
from bot.messages import Inbound
from bot.questionnaire import Questionnaire

logger = logging.getLogger(__name__)

CHANNEL = "telegram"
MAX_TEXT = 4096  # UTF-16 code units, counted after HTML parsing
MAX_CALLBACK_DATA = 64  # bytes
MAX_CAPTION = 1024
SELECTED_MARK = "✅"
ANSWER_MARK = "✔"
# Special choices stay on their own row, below the options.
SPECIAL_CODES = frozenset({"DONE", "SUBMIT", "AMEND"})
ADMIN_COMMANDS = frozenset({"export", "stats"})
# A press whose button cannot be decoded can only be stale: no slot ever has this key.
UNKNOWN_SLOT = "?"
# Labels longer than this are truncated by Telegram's apps on a phone-wide button: such option
# lists are also written out, numbered, in the message text.
LONG_LABEL = 30
# Message content Telegram delivers that the questionnaire cannot read.
MEDIA_KEYS = ("photo", "sticker", "voice", "video", "video_note", "audio", "animation",
              "document", "location", "venue", "contact", "poll", "dice", "game", "story",
              "paid_media", "checklist", "invoice")
_COMMAND_RE = re.compile(r"^/([A-Za-z0-9_]{1,64})(?:@([A-Za-z0-9_]+))?(?:\s+(.*))?$", re.DOTALL)

Route = Literal["turn", "admin", "group", "edited", "member", "ignore"]


def escape(text: str) -> str:
    """Telegram's HTML parse mode needs only <, > and & escaped."""
    return html.escape(text, quote=False)


def utf16_len(text: str) -> int:
    if text.isascii():
        return len(text)
    return len(text.encode("utf-16-le")) // 2


# --- callback data -------------------------------------------------------------------------------


class CallbackCodec:
    """callback_data for one button: "slot|CODE" (e.g. "A9_areas@0|RISK_ASSESSMENT").

    Telegram allows 64 bytes. A longer pair is sent as "#" + a 16-character hash, and the pair
    is remembered under it; every pair of the installed questionnaires is registered at start-up
    (`for_questionnaires`), so presses on buttons sent before a restart still decode. A press
    that does not decode is answered as a stale press (note + current question).
    """

    def __init__(self, known: Iterable[tuple[str | None, str]] = (), *,
                 max_learned: int = 100_000) -> None:
        self._by_token: dict[str, tuple[str | None, str]] = {}
        self._max_learned = max_learned
        self._known = 0
        for slot, code in known:
            self.encode(slot, code)
        self._known = len(self._by_token)

    @classmethod
    def for_questionnaires(cls, questionnaires: Iterable[Questionnaire]) -> CallbackCodec:
        return cls(_known_pairs(questionnaires))

    def encode(self, slot: str | None, code: str) -> str:
        data = f"{slot or ''}|{code}"
        if (len(data.encode()) <= MAX_CALLBACK_DATA and "|" not in (slot or "")
                and not data.startswith("#")):
            return data
        digest = hashlib.blake2b(data.encode(), digest_size=12).digest()
        token = "#" + base64.urlsafe_b64encode(digest).decode()
        if token not in self._by_token:
            if len(self._by_token) - self._known >= self._max_learned:
                self._forget_learned()
            self._by_token[token] = (slot, code)
        return token

    def decode(self, data: str | None) -> tuple[str | None, str] | None:
        """(slot, code), or None when the data is not ours or no longer known.

        Every button capbot sends names the slot it answers, and the engine checks that slot
        against the one it awaits (a press on an older question is stale). Data without a slot
        ("|CODE", which no client of ours sends) would skip that check, so it does not decode.
        """
        if not data:
            return None
        if data.startswith("#"):
            pair = self._by_token.get(data)
            return pair if pair is not None and pair[0] else None
        slot, sep, code = data.partition("|")
        if not sep or not code or not slot:
            return None
        return slot, code

    def _forget_learned(self) -> None:
        kept = list(self._by_token.items())[: self._known]
        self._by_token = dict(kept)


def _known_pairs(questionnaires: Iterable[Questionnaire]) -> Iterable[tuple[str | None, str]]:
    yield from (("language", lang) for lang in LANGUAGES)
    yield "review", "SUBMIT"
    yield "done", "AMEND"
    for qn in questionnaires:
        for section in qn.sections:
            repeats = [None] if section.repeat_max == 1 else range(section.repeat_max)
            for q in section.questions:
                source = qn.questions[q.options_from] if q.options_from else q
                codes = [o.code for o in source.options]
                if q.type == "yes_no" and not codes:
                    codes = ["YES", "NO"]
                if not codes:
                    continue
                codes.append("DONE")
                for repeat in repeats:
                    slot = q.id if repeat is None else f"{q.id}@{repeat}"
                    for code in codes:
                        yield slot, code


# --- inbound: update JSON -> TelegramEvent -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Pressed:
    """The message whose inline button was pressed, as the user saw it."""

    message_id: int
    slot: str | None
    code: str | None
    label: str | None  # the pressed button's text
    text: str  # the message's text as Telegram shows it ("" for an inaccessible old message)
    entities: tuple[Mapping[str, Any], ...] = ()  # its formatting

    def to_json(self) -> dict[str, Any]:
        """As the turn's replies carry it (Inbound.reply_path, then the outbox payload)."""
        return {"message_id": self.message_id, "slot": self.slot, "code": self.code,
                "label": self.label, "text": self.text, "entities": list(self.entities)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> Pressed | None:
        if not isinstance(data, Mapping) or not data.get("message_id"):
            return None
        return cls(int(data["message_id"]), data.get("slot"), data.get("code"),
                   data.get("label"), str(data.get("text") or ""),
                   tuple(data.get("entities") or ()))

    def record_html(self) -> str:
        """How the message reads once answered, for a message this process did not send (a
        restart): only then worth the HTML's cost (about 0.6 ms)."""
        return record_of(self.text, self.entities)


@dataclass(frozen=True, slots=True)
class TelegramEvent:
    """What one update means for capbot. `route`:

    turn: `inbound` goes to the conversation service; admin: /export or /stats (`command`,
    `args`); group: a group or channel chat, refused (`explain`: say why); edited: an edited
    message, acknowledged; member: the user blocked (`member_status` "kicked") or unblocked
    the bot; ignore: nothing to do (recorded only).
    """

    route: Route
    update_id: int
    message_id: str  # unique id in the inbound log: "<bot id>:<update id>"
    kind: str  # inbound log kind: start | text | choice | unsupported | edited | member | ...
    raw: str
    chat_id: int | None = None
    chat_type: str | None = None
    user_id: int | None = None
    language_hint: str | None = None
    display_name: str | None = None
    inbound: Inbound | None = None
    command: str | None = None
    args: tuple[str, ...] = ()
    callback_query_id: str | None = None
    pressed: Pressed | None = None
    member_status: str | None = None
    explain: bool = False
    reason: str = ""

    @property
    def address(self) -> str | None:
        return None if self.chat_id is None else str(self.chat_id)


def parse_update(data: Mapping[str, Any], *, bot_id: int, bot_username: str | None,
                 codec: CallbackCodec, raw: str | None = None) -> TelegramEvent:
    """Translate one update; never raises on unusual but well-formed updates."""
    update_id = int(data["update_id"])
    base = {"update_id": update_id, "message_id": f"{bot_id}:{update_id}",
            "raw": raw if raw is not None else json.dumps(data, ensure_ascii=False,
                                                          separators=(",", ":"))}
    if "message" in data:
        return _message(data["message"], base, bot_username, edited=False)
    if "edited_message" in data:
        return _message(data["edited_message"], base, bot_username, edited=True)
    if "callback_query" in data:
        return _callback(data["callback_query"], base, codec)
    if "my_chat_member" in data:
        return _member(data["my_chat_member"], base, bot_username)
    for key in ("channel_post", "edited_channel_post"):
        if key in data:
            chat = data[key].get("chat") or {}
            return TelegramEvent("group", kind="channel_post", chat_id=chat.get("id"),
                                 chat_type=chat.get("type", "channel"),
                                 explain=key == "channel_post" and _is_command(data[key]),
                                 reason="channel post", **base)
    kind = next((k for k in data if k != "update_id"), "unknown")
    return TelegramEvent("ignore", kind=kind[:16], reason=f"update type {kind}", **base)


def _user_fields(user: Mapping[str, Any] | None) -> dict[str, Any]:
    if not user:
        return {}
    name = " ".join(p for p in (user.get("first_name"), user.get("last_name")) if p)
    return {"user_id": user.get("id"), "language_hint": user.get("language_code"),
            "display_name": name[:200] or user.get("username")}


def _is_command(message: Mapping[str, Any]) -> bool:
    text = message.get("text") or ""
    return text.startswith("/")


def _addressed_to_bot(message: Mapping[str, Any], bot_username: str | None) -> bool:
    """In a group: a command, a mention of the bot, a reply to it, or the bot was added."""
    text = message.get("text") or ""
    name = (bot_username or "").lower()
    if text.startswith("/"):
        target = _COMMAND_RE.match(text.strip())
        return not (target and target.group(2) and target.group(2).lower() != name)
    if name and f"@{name}" in text.lower():
        return True
    reply = message.get("reply_to_message") or {}
    if (reply.get("from") or {}).get("is_bot") and \
            (reply["from"].get("username") or "").lower() == name:
        return True
    return any(m.get("is_bot") and (m.get("username") or "").lower() == name
               for m in message.get("new_chat_members") or ())


def _message(message: Mapping[str, Any], base: dict[str, Any], bot_username: str | None,
             *, edited: bool) -> TelegramEvent:
    chat = message.get("chat") or {}
    fields = {"chat_id": chat.get("id"), "chat_type": chat.get("type"),
              **_user_fields(message.get("from")), **base}
    if chat.get("type") != "private":
        return TelegramEvent("group", kind="group", explain=not edited and _addressed_to_bot(
            message, bot_username), reason=f"{chat.get('type')} chat", **fields)
    if edited:
        return TelegramEvent("edited", kind="edited", reason="edited message", **fields)
    text = message.get("text")
    channel_user = str(chat.get("id"))
    common = {"channel": CHANNEL, "user_id": channel_user, "message_id": base["message_id"],
              "language_hint": fields.get("language_hint"),
              "display_name": fields.get("display_name"), "raw": base["raw"]}
    if text is not None:
        command = _COMMAND_RE.match(text.strip()) if text.startswith("/") else None
        name = command.group(1).lower() if command else None
        if name == "start":
            payload = (command.group(3) or "").strip()[:256] or None  # type: ignore[union-attr]
            inbound = Inbound(kind="start", text=text, payload=payload, **common)
            return TelegramEvent("turn", kind="start", inbound=inbound, **fields)
        if name in ADMIN_COMMANDS:
            args = tuple((command.group(3) or "").split())  # type: ignore[union-attr]
            return TelegramEvent("admin", kind="command", command=name, args=args, **fields)
        inbound = Inbound(kind="text", text=text, **common)
        return TelegramEvent("turn", kind="text", inbound=inbound, **fields)
    media = next((key for key in MEDIA_KEYS if key in message), None)
    if media is not None:
        inbound = Inbound(kind="unsupported", text=message.get("caption") or "", **common)
        return TelegramEvent("turn", kind="unsupported", inbound=inbound,
                             reason=f"unsupported content: {media}", **fields)
    service = next((k for k in message if k not in _MESSAGE_META), "empty")
    return TelegramEvent("ignore", kind="service", reason=f"service message: {service}",
                         **fields)


_MESSAGE_META = frozenset({
    "message_id", "message_thread_id", "from", "sender_chat", "date", "chat", "edit_date",
    "entities", "forward_origin", "is_topic_message", "reply_to_message", "via_bot",
    "has_protected_content", "author_signature", "sender_boost_count", "sender_business_bot",
    "business_connection_id", "is_from_offline", "link_preview_options", "effect_id",
    "reply_markup"})


def _button_label(message: Mapping[str, Any], data: str | None) -> str | None:
    for row in (message.get("reply_markup") or {}).get("inline_keyboard", ()):
        for button in row:
            if button.get("callback_data") == data:
                return button.get("text")
    return None


_OPTION_LINE = re.compile(rf"^(?:{SELECTED_MARK})?\d+\. ")


def record_of(text: str, entities: Iterable[Mapping[str, Any]]) -> str:
    """A question message as it should read once answered, from what Telegram shows: its
    formatting (entities) as HTML, without the numbered option list render_reply adds."""
    if not text:
        return ""
    try:
        from telegram import Message

        html_text = Message.de_json({"message_id": 0, "date": 0, "text": text,
                                     "chat": {"id": 0, "type": "private"},
                                     "entities": list(entities)}, None).text_html
    except Exception:  # unreadable entities: the plain text will do
        html_text = escape(text)
    head, sep, tail = html_text.rpartition("\n\n")
    if sep and head and all(_OPTION_LINE.match(line) for line in tail.split("\n")):
        return head
    return html_text


def _callback(query: Mapping[str, Any], base: dict[str, Any],
              codec: CallbackCodec) -> TelegramEvent:
    message = query.get("message") or {}
    chat = message.get("chat") or {}
    fields = {"chat_id": chat.get("id"), "chat_type": chat.get("type"),
              "callback_query_id": query.get("id"), **_user_fields(query.get("from")), **base}
    if not message:  # a button of an inline-mode message: not ours
        return TelegramEvent("ignore", kind="choice", reason="inline message button", **fields)
    if chat.get("type") != "private":
        return TelegramEvent("group", kind="choice", reason=f"{chat.get('type')} chat",
                             **fields)
    data = query.get("data")
    decoded = codec.decode(data)
    slot, code = decoded if decoded else (UNKNOWN_SLOT, "")
    pressed = Pressed(int(message.get("message_id") or 0), slot, code,
                      _button_label(message, data), str(message.get("text") or ""),
                      tuple(message.get("entities") or ()))
    inbound = Inbound(CHANNEL, str(chat.get("id")), base["message_id"], kind="choice",
                      choice=code, for_slot=slot, language_hint=fields.get("language_hint"),
                      display_name=fields.get("display_name"), raw=base["raw"],
                      reply_path={"pressed": pressed.to_json()})  # the sender tidies it
    reason = "" if decoded else f"undecodable callback data {str(data)[:64]!r}"
    return TelegramEvent("turn", kind="choice", inbound=inbound, pressed=pressed, reason=reason,
                         **fields)


def _member(update: Mapping[str, Any], base: dict[str, Any],
            bot_username: str | None) -> TelegramEvent:
    chat = update.get("chat") or {}
    status = (update.get("new_chat_member") or {}).get("status")
    fields = {"chat_id": chat.get("id"), "chat_type": chat.get("type"),
              **_user_fields(update.get("from")), **base}
    if chat.get("type") != "private":
        joined = status in ("member", "administrator")
        return TelegramEvent("group", kind="member", member_status=status, explain=joined,
                             reason=f"bot is {status} in a {chat.get('type')}", **fields)
    return TelegramEvent("member", kind="member", member_status=status,
                         reason=f"bot {status} by the user", **fields)


# --- outbound: reply payload -> Telegram messages ------------------------------------------------


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One Telegram message: HTML text and, on the last part of a reply, the keyboard."""

    html: str
    keyboard: tuple[tuple[tuple[str, str], ...], ...] | None = None  # rows of (label, data)
    record_html: str = ""  # the question as it should read once answered (no option list)

    @property
    def reply_markup(self) -> dict[str, Any] | None:
        if not self.keyboard:
            return None
        return {"inline_keyboard": [[{"text": text, "callback_data": data} for text, data in row]
                                    for row in self.keyboard]}


@dataclass(frozen=True, slots=True)
class Rendered:
    parts: tuple[Outgoing, ...]
    slot: str | None

    @property
    def has_buttons(self) -> bool:
        return bool(self.parts and self.parts[-1].keyboard)


def render_reply(payload: Mapping[str, Any], codec: CallbackCodec) -> Rendered:
    """Reply payload -> messages. Progress in italics, the question in bold, user text escaped."""
    text = str(payload.get("text") or "")
    kind = payload.get("kind")
    choices = [(str(c[0]), str(c[1]), bool(c[2])) for c in payload.get("choices") or ()]
    slot = payload.get("slot")
    multi = bool(payload.get("multi"))
    options = [c for c in choices if c[0] not in SPECIAL_CODES]
    listed = (kind == "question" and bool(options)
              and max(len(label) for _, label, _ in options) > LONG_LABEL)
    body = text
    if listed:
        lines = [f"{SELECTED_MARK if sel else ''}{n}. {label}"
                 for n, (_, label, sel) in enumerate(options, start=1)]
        body = text + "\n\n" + "\n".join(lines)
    chunks = split_text(body) if body.strip() else ["…"]
    progress = payload.get("progress") if kind == "question" else None
    parts_html = [_format_first(chunks[0], progress, kind == "question"),
                  *(escape(c) for c in chunks[1:])]
    keyboard = _keyboard(options, [c for c in choices if c[0] in SPECIAL_CODES], slot, multi,
                         listed, codec, kind)
    record = _format_first(text, progress, kind == "question") if len(chunks) == 1 else ""
    parts = [Outgoing(h) for h in parts_html[:-1]]
    parts.append(Outgoing(parts_html[-1], keyboard, record or parts_html[-1]))
    return Rendered(tuple(parts), slot)


def _format_first(chunk: str, progress: str | None, question: bool) -> str:
    if progress and chunk.startswith(progress + "\n"):
        head, _, rest = chunk[len(progress) + 1:].partition("\n")
        out = f"<i>{escape(progress)}</i>\n<b>{escape(head)}</b>"
        return out + ("\n" + escape(rest) if rest else "")
    if question:
        head, _, rest = chunk.partition("\n")
        return f"<b>{escape(head)}</b>" + ("\n" + escape(rest) if rest else "")
    return escape(chunk)


def _keyboard(options: list[tuple[str, str, bool]], special: list[tuple[str, str, bool]],
              slot: str | None, multi: bool, listed: bool, codec: CallbackCodec,
              kind: Any) -> tuple[tuple[tuple[str, str], ...], ...] | None:
    if not options and not special:
        return None
    buttons = []
    for n, (code, label, selected) in enumerate(options, start=1):
        shown = str(n) if listed else label  # long labels are written out in the text
        if selected and (multi or kind == "language_menu"):
            shown = f"{SELECTED_MARK} {shown}"
        buttons.append((_button_text(shown), codec.encode(slot, code)))
    longest = max((len(text) for text, _ in buttons), default=0)
    if listed:
        per_row = 5 if len(buttons) > 6 else len(buttons)
    else:
        per_row = 1 if longest > 24 else 2 if longest > 12 or len(buttons) == 4 else 3
    rows = [tuple(buttons[i:i + per_row]) for i in range(0, len(buttons), per_row)]
    rows += [((_button_text(label), codec.encode(slot, code)),) for code, label, _ in special]
    return tuple(rows)


def _button_text(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= 120 else text[:119] + "…"


def split_text(text: str, limit: int = MAX_TEXT) -> list[str]:
    """Parts of at most `limit` UTF-16 units, cut at a blank line, else a line, else a space."""
    if len(text) * 2 <= limit or utf16_len(text) <= limit:
        return [text]
    parts: list[str] = []
    rest = text
    while utf16_len(rest) > limit:
        window = _prefix_within(rest, limit)
        cut, skip = len(window), 0  # a hard cut, unless a separator is found far enough in
        for sep in ("\n\n", "\n", " "):
            found = window.rfind(sep)
            if found > len(window) // 3:
                cut, skip = found, len(sep)
                break
        parts.append(rest[:cut].rstrip("\n"))
        rest = rest[cut + skip:]
    if rest.strip():
        parts.append(rest)
    return [p for p in parts if p.strip()] or [text[:limit]]


def _prefix_within(text: str, limit: int) -> str:
    """The longest prefix of `text` of at most `limit` UTF-16 units."""
    units = 0
    for index, ch in enumerate(text):
        units += 2 if ord(ch) > 0xFFFF else 1
        if units > limit:
            return text[:index]
    return text


def answered_html(record_html: str, display: str) -> str | None:
    """The question once answered: its text, then the answer; None if that is too long."""
    out = f"{record_html}\n\n{ANSWER_MARK} <b>{escape(display)}</b>"
    plain_units = utf16_len(re.sub(r"<[^>]+>", "", record_html)) + utf16_len(display) + 4
    return out if plain_units <= MAX_TEXT else None


def preformatted(text: str) -> list[str]:
    """Monospace parts (statistics tables), each within the limit once wrapped in <pre>."""
    return [f"<pre>{escape(chunk)}</pre>" for chunk in split_text(text.strip("\n") or "…")]


def language_of(hint: str | None) -> str:
    """One of the six from a Telegram language_code ("pt-br" -> "en"), for notes outside a turn."""
    code = (hint or "").lower().replace("_", "-").split("-")[0]
    return code if code in LANGUAGES else "en"
