"""Loopback fake of the Telegram Bot API (aiohttp) with simulated users, for driving real PTB."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import html
import itertools
import json
import math
import random
import re
import time
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web
from telegram.ext import Application, ApplicationBuilder

TOKEN = "123456789:TEST-fake-bot-api-token"
SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"

# Form-encoded requests carry every value as text and PTB JSON-encodes the non-strings, so
# these free-text parameters must stay strings even when they look like JSON ("123", "true").
_TEXT_PARAMS = {"text", "caption", "parse_mode", "callback_query_id", "url", "secret_token"}
_TEXT_PARAMS |= {"language_code", "file_id", "action", "title", "description", "name"}
_NOT_MODIFIED = (
    "message is not modified: specified new message content and reply markup are exactly the "
    "same as a current content and reply markup of the message"
)


class ApiError(Exception):
    """An error answer of the Bot API: HTTP status = error_code, plus the description."""

    def __init__(self, code: int, description: str, retry_after: int | None = None) -> None:
        super().__init__(description)
        self.code, self.description, self.retry_after = code, description, retry_after


def _bad(detail: str) -> ApiError:
    return ApiError(400, f"Bad Request: {detail}")


def _too_many(retry_after: int) -> ApiError:
    return ApiError(429, f"Too Many Requests: retry after {retry_after}", retry_after)


def _now() -> int:
    return int(time.time())  # the Bot API's dates are Unix seconds


# --- Telegram's HTML parse mode ----------------------------------------------------------------

_HTML_TAGS = dict(  # tag -> entity type
    pair.split("=")
    for pair in [
        "b=bold",
        "strong=bold",
        "i=italic",
        "em=italic",
        "u=underline",
        "ins=underline",
        "s=strikethrough",
        "strike=strikethrough",
        "del=strikethrough",
        "tg-spoiler=spoiler",
        "span=spoiler",
        "a=text_link",
        "code=code",
        "pre=pre",
        "blockquote=blockquote",
        "tg-emoji=custom_emoji",
    ]
)
_TOKEN_RE = re.compile(r"(<[^>]*>?|&[#\w]*;?)")
_TAG_RE = re.compile(r"<(/?)([a-zA-Z][a-zA-Z0-9-]*)((?:\s[^<>]*)?)>")
_ATTR_RE = re.compile(r"""([a-zA-Z][\w-]*)(?:\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s"'>]+)))?""")
_ENTITY_RE = re.compile(r"&(?:#\d+|#x[0-9a-fA-F]+|lt|gt|amp|quot);")


def _utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2  # entity offsets count UTF-16 code units


def parse_html(source: str) -> tuple[str, list[dict[str, Any]]]:
    """Parse like Telegram's parse_mode=HTML: (plain text, entities), or ValueError."""
    out: list[str] = []
    offset = 0  # UTF-16 position in the output
    consumed = 0  # position in the source, for error messages
    stack: list[tuple[str, int, dict[str, Any]]] = []
    entities: list[dict[str, Any]] = []
    for token in _TOKEN_RE.split(source):
        at = f"at byte offset {len(source[:consumed].encode())}"
        consumed += len(token)
        if token.startswith("<"):
            tag = _TAG_RE.fullmatch(token)
            if tag is None:
                raise ValueError(f"Unclosed start tag {at}")
            closing, name, attr_text = tag.group(1), tag.group(2).lower(), tag.group(3)
            if closing:
                if not stack:
                    raise ValueError(f"Unexpected end tag {at}")
                open_name, start, entity = stack.pop()
                if open_name != name:
                    raise ValueError(
                        f'Unmatched end tag {at}, expected "</{open_name}>", found "</{name}>"'
                    )
                if offset > start:  # Telegram drops empty entities
                    entities.append({**entity, "offset": start, "length": offset - start})
                continue
            attrs = {
                m.group(1).lower(): m.group(2) or m.group(3) or m.group(4) or ""
                for m in _ATTR_RE.finditer(attr_text)
            }
            kind = _HTML_TAGS.get(name)
            if kind is None or (name == "span" and attrs.get("class") != "tg-spoiler"):
                raise ValueError(f'Unsupported start tag "{name}" {at}')
            entity = {"type": kind}
            if name == "a":
                entity["url"] = attrs.get("href", "")
            elif name == "blockquote" and "expandable" in attrs:
                entity["type"] = "expandable_blockquote"
            elif name == "tg-emoji":
                entity["custom_emoji_id"] = attrs.get("emoji-id", "")
            stack.append((name, offset, entity))
            continue
        if token.startswith("&") and _ENTITY_RE.fullmatch(token):
            token = html.unescape(token)  # other "&..." stays literal, as in Telegram
        out.append(token)
        offset += _utf16_len(token)
    if stack:
        raise ValueError(f'Can\'t find end tag corresponding to start tag "{stack[-1][0]}"')
    entities.sort(key=lambda e: (e["offset"], -e["length"]))
    return "".join(out), entities


# --- stored state ------------------------------------------------------------------------------


@dataclass
class Upload:
    """A file part of a multipart request."""

    filename: str | None
    data: bytes
    mime_type: str | None


@dataclass
class RecordedRequest:
    """One Bot API call as the fake saw it, and the HTTP status it answered."""

    method: str
    params: dict[str, Any]
    files: dict[str, Upload]
    status: int = 200
    description: str | None = None
    at: float = field(default_factory=time.monotonic)  # when it arrived


@dataclass
class StoredFile:
    """A file known to the fake (uploaded by the bot or sent by a simulated user)."""

    file_id: str
    file_unique_id: str
    file_path: str  # relative to base_file_url + token
    data: bytes
    filename: str | None = None
    mime_type: str | None = None

    def as_json(self, **extra: Any) -> dict[str, Any]:
        """The Bot API object (Document, Voice, ...) for this file."""
        fields = {"file_name": self.filename, "mime_type": self.mime_type, **extra}
        ids = {"file_id": self.file_id, "file_unique_id": self.file_unique_id}
        fields = {k: v for k, v in fields.items() if v is not None}
        return {**ids, "file_size": len(self.data), **fields}


@dataclass(eq=False)
class ChatMessage:
    """A message in a chat; `data` is its Bot API JSON, kept current through edits."""

    data: dict[str, Any]
    from_bot: bool
    deleted: bool = False

    @property
    def message_id(self) -> int:
        return self.data["message_id"]

    @property
    def text(self) -> str | None:
        """The text, or the caption of a media message."""
        return self.data.get("text", self.data.get("caption"))

    @property
    def reply_markup(self) -> dict[str, Any] | None:
        return self.data.get("reply_markup")

    @property
    def document(self) -> dict[str, Any] | None:
        return self.data.get("document")

    @property
    def buttons(self) -> list[dict[str, Any]]:
        """Inline keyboard buttons, row by row, flattened."""
        rows = (self.reply_markup or {}).get("inline_keyboard", [])
        return [button for row in rows for button in row]

    @property
    def button_texts(self) -> list[str]:
        return [button["text"] for button in self.buttons]

    def button(self, text_or_data: str) -> dict[str, Any] | None:
        matches = (b for b in self.buttons if text_or_data in (b["text"], b.get("callback_data")))
        return next(matches, None)


class _Signal:
    """Wakes every waiter when something changed: sync `notify()`, async `wait_for()`."""

    def __init__(self) -> None:
        self._waiters: set[asyncio.Future[None]] = set()

    def notify(self) -> None:
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._waiters.clear()

    async def wait_for(self, condition: Callable[[], Any], timeout: float | None) -> Any:  # noqa: ASYNC109
        """Return condition()'s first truthy value; TimeoutError after `timeout` seconds."""
        async with asyncio.timeout(timeout):
            while not (result := condition()):
                waiter = asyncio.get_running_loop().create_future()
                self._waiters.add(waiter)
                try:
                    await waiter
                finally:
                    self._waiters.discard(waiter)
        return result


# --- simulated chats and users -----------------------------------------------------------------


class SimulatedChat:
    """A chat as both sides see it: users act in it, tests read what the bot sent.

    User actions are plain calls (they only queue an update for the bot). The bot's messages
    are read in order, each once, by next_message()/wait_for_message().
    """

    def __init__(self, api: FakeBotApi, chat_json: dict[str, Any]) -> None:
        self.api = api
        self.chat = chat_json
        self.id: int = chat_json["id"]
        self.blocked = False
        self.callback_answers: list[dict[str, Any]] = []
        self.chat_actions: list[str] = []
        self.reply_keyboard: dict[str, Any] | None = None  # last ReplyKeyboardMarkup shown
        self._by_id: dict[int, ChatMessage] = {}
        self._bot_messages: list[ChatMessage] = []
        self._read = 0  # how many of _bot_messages next_message()/wait_for_message() consumed
        self._message_ids = itertools.count(1)
        self._changed = _Signal()

    def _default_sender(self) -> SimulatedUser:
        raise NotImplementedError

    # the bot's side, as the user sees it

    @property
    def messages(self) -> list[ChatMessage]:
        """What the bot sent here and did not delete, in order, in its current state."""
        return [m for m in self._bot_messages if not m.deleted]

    @property
    def last_message(self) -> ChatMessage | None:
        return self.messages[-1] if self.messages else None

    async def wait_for_message(
        self,
        predicate: Callable[[ChatMessage], bool] | None = None,
        timeout: float = 5.0,  # noqa: ASYNC109
    ) -> ChatMessage:
        """The next unread bot message (matching `predicate`); skipped ones count as read."""

        def find() -> ChatMessage | None:
            for index in range(self._read, len(self._bot_messages)):
                message = self._bot_messages[index]
                if not message.deleted and (predicate is None or predicate(message)):
                    self._read = index + 1
                    return message
            return None

        return await self._changed.wait_for(find, timeout)

    async def next_message(self, timeout: float = 5.0) -> ChatMessage:  # noqa: ASYNC109
        return await self.wait_for_message(None, timeout)

    def mark_all_read(self) -> None:
        self._read = len(self._bot_messages)

    async def wait_for(self, condition: Callable[[], Any], timeout: float = 5.0) -> Any:  # noqa: ASYNC109
        """Wait until condition() is truthy (checked whenever this chat changes), return it."""
        return await self._changed.wait_for(condition, timeout)

    async def wait_for_callback_answer(
        self,
        query_id: str | None = None,
        timeout: float = 5.0,  # noqa: ASYNC109
    ) -> dict[str, Any]:
        """The bot's answerCallbackQuery parameters for `query_id` (default: any query)."""

        def find() -> dict[str, Any] | None:
            answers = reversed(self.callback_answers)
            return next((a for a in answers if query_id in (None, a["callback_query_id"])), None)

        return await self._changed.wait_for(find, timeout)

    # user actions

    def send_text(self, text: str, *, sender: SimulatedUser | None = None) -> dict[str, Any]:
        return self._user_message({"text": text}, sender)

    def send_command(
        self, command: str, payload: str | None = None, *, sender: SimulatedUser | None = None
    ) -> dict[str, Any]:
        command = command if command.startswith("/") else f"/{command}"
        text = f"{command} {payload}" if payload else command
        entity = {"type": "bot_command", "offset": 0, "length": _utf16_len(command)}
        return self._user_message({"text": text, "entities": [entity]}, sender)

    def send_photo(
        self,
        data: bytes = b"\xff\xd8\xff fake jpeg",
        *,
        caption: str | None = None,
        sender: SimulatedUser | None = None,
    ) -> dict[str, Any]:
        stored = self.api.store_file(data, "photos", mime_type="image/jpeg")
        sizes = [stored.as_json(mime_type=None, width=w, height=w) for w in (90, 800)]
        return self._user_message({"photo": sizes, **_caption(caption)}, sender)

    def send_document(
        self,
        filename: str = "report.pdf",
        data: bytes = b"%PDF-1.4 fake",
        mime_type: str = "application/pdf",
        *,
        caption: str | None = None,
        sender: SimulatedUser | None = None,
    ) -> dict[str, Any]:
        stored = self.api.store_file(data, "documents", filename=filename, mime_type=mime_type)
        return self._user_message({"document": stored.as_json(), **_caption(caption)}, sender)

    def send_sticker(self, emoji: str = "👍", *, sender: SimulatedUser | None = None) -> dict:
        stored = self.api.store_file(b"RIFF fake webp", "stickers", mime_type="image/webp")
        sticker = stored.as_json(mime_type=None, type="regular", width=512, height=512)
        sticker.update(is_animated=False, is_video=False, emoji=emoji)
        return self._user_message({"sticker": sticker}, sender)

    def send_voice(self, duration: int = 3, *, sender: SimulatedUser | None = None) -> dict:
        stored = self.api.store_file(b"OggS fake opus", "voice", mime_type="audio/ogg")
        return self._user_message({"voice": stored.as_json(duration=duration)}, sender)

    def send_location(
        self,
        latitude: float = 46.2,
        longitude: float = 6.15,
        *,
        sender: SimulatedUser | None = None,
    ) -> dict[str, Any]:
        location = {"latitude": latitude, "longitude": longitude}
        return self._user_message({"location": location}, sender)

    def edit_last_text(self, new_text: str, *, sender: SimulatedUser | None = None) -> dict:
        """Edit the sender's latest text message here: the bot gets an `edited_message`."""
        sender = sender or self._default_sender()
        mine = (
            m
            for m in reversed(self._by_id.values())
            if not m.from_bot and m.data["from"]["id"] == sender.id and "text" in m.data
        )
        message = next(mine, None)
        if message is None:
            raise LookupError(f"user {sender.id} sent no text message in chat {self.id}")
        message.data.update(text=new_text, edit_date=_now())
        message.data.pop("entities", None)
        self.api.enqueue_update({"edited_message": message.data})
        return message.data

    def press(
        self,
        button: str,
        message: ChatMessage | None = None,
        *,
        sender: SimulatedUser | None = None,
    ) -> str:
        """Press an inline button (by text or callback_data) of `message`, by default of the
        latest bot message that has it. Returns the callback query id."""
        sender = sender or self._default_sender()
        if message is None:
            message = next((m for m in reversed(self.messages) if m.button(button)), None)
        pressed = message.button(button) if message else None
        if message is None or pressed is None:
            raise LookupError(f"no bot message in chat {self.id} has a button {button!r}")
        if "callback_data" not in pressed:
            raise ValueError(f"button {button!r} has no callback_data to press")
        query = {
            "id": self.api.open_callback_query(self),
            "from": sender.user_json,
            "message": message.data,
            "chat_instance": str(abs(self.id) * 7919 + 17),  # stable per chat, opaque
            "data": pressed["callback_data"],
        }
        self.api.enqueue_update({"callback_query": query})
        return query["id"]

    def _user_message(self, content: dict[str, Any], sender: SimulatedUser | None) -> dict:
        sender = sender or self._default_sender()
        data = {"message_id": next(self._message_ids), "from": sender.user_json, "date": _now()}
        data.update(chat=self.chat, **content)
        self._store(ChatMessage(data, from_bot=False))
        self.api.enqueue_update({"message": data})
        return data

    # the bot's actions, called by FakeBotApi's method handlers

    def _store(self, message: ChatMessage) -> None:
        self._by_id[message.message_id] = message
        if message.from_bot:
            self._bot_messages.append(message)
        self._changed.notify()

    def _post_bot_message(self, content: dict[str, Any], params: dict[str, Any]) -> ChatMessage:
        data = {"message_id": next(self._message_ids), "from": self.api.bot_user}
        data.update(chat=self.chat, date=_now(), **content)
        markup = self.api.validate_reply_markup(params.get("reply_markup"))
        if markup and "inline_keyboard" in markup:
            data["reply_markup"] = markup  # Telegram echoes only inline keyboards
        elif markup and "keyboard" in markup:
            self.reply_keyboard = markup
        elif markup and markup.get("remove_keyboard"):
            self.reply_keyboard = None
        reply_to = (params.get("reply_parameters") or {}).get("message_id")
        if reply_to and (original := self._by_id.get(int(reply_to))):
            data["reply_to_message"] = dict(original.data)
            data["reply_to_message"].pop("reply_to_message", None)
        message = ChatMessage(data, from_bot=True)
        self._store(message)
        return message

    def _edit(self, message: ChatMessage, changes: dict[str, Any]) -> dict[str, Any]:
        if all(message.data.get(key) == value for key, value in changes.items()):
            raise _bad(_NOT_MODIFIED)
        for key, value in changes.items():
            if value is None:
                message.data.pop(key, None)
            else:
                message.data[key] = value
        message.data["edit_date"] = _now()
        self._changed.notify()
        return message.data


def _update_chat(update: dict[str, Any]) -> object:
    """The chat an update belongs to (its own id for anything without one)."""
    for key in ("message", "edited_message", "channel_post", "my_chat_member"):
        chat = (update.get(key) or {}).get("chat")
        if chat:
            return chat.get("id")
    message = (update.get("callback_query") or {}).get("message") or {}
    if message.get("chat"):
        return message["chat"].get("id")
    return ("update", update.get("update_id"))


def _caption(caption: str | None) -> dict[str, str]:
    return {"caption": caption} if caption else {}


class SimulatedUser(SimulatedChat):
    """A Telegram user and their private chat with the bot (chat id = user id)."""

    def __init__(self, api: FakeBotApi, user_id: int, language_code: str | None, **names: Any):
        names = {k: v for k, v in names.items() if v is not None}
        self.user_json: dict[str, Any] = {"id": user_id, "is_bot": False, **names}
        if language_code is not None:
            self.user_json["language_code"] = language_code
        super().__init__(api, {"id": user_id, "type": "private", **names})

    def _default_sender(self) -> SimulatedUser:
        return self


class SimulatedGroup(SimulatedChat):
    """A group chat; user actions take `sender=` (default: the first member)."""

    def __init__(self, api: FakeBotApi, chat_id: int, title: str, members: list[SimulatedUser]):
        kind = "supergroup" if str(chat_id).startswith("-100") else "group"
        super().__init__(api, {"id": chat_id, "type": kind, "title": title})
        self.members = members

    def _default_sender(self) -> SimulatedUser:
        if not self.members:
            self.members.append(self.api.user(abs(self.id) % 10**9 + 1))
        return self.members[0]


# --- the server --------------------------------------------------------------------------------


class FakeBotApi:
    """The Bot API for one bot token on 127.0.0.1:<free port>; tests/telegram shows usage."""

    def __init__(
        self,
        token: str = TOKEN,
        *,
        username: str = "capbot_test_bot",
        webhook_retries: int = 3,
        webhook_retry_delay: float = 0.05,
        webhook_concurrency: int = 1,
        telegram_limits: bool = False,
    ) -> None:
        self.token = token
        self.bot_user = {"id": int(token.split(":")[0]), "is_bot": True}
        self.bot_user.update(first_name="CapBot Test", username=username, can_join_groups=True)
        self.bot_user.update(can_read_all_group_messages=False, supports_inline_queries=False)
        self.requests: list[RecordedRequest] = []
        self.files: dict[str, StoredFile] = {}
        self.webhook: dict[str, Any] | None = None
        self.webhook_errors: list[str] = []
        self.webhook_retries, self.webhook_retry_delay = webhook_retries, webhook_retry_delay
        # Deliveries under way at once (Telegram's max_connections): 1 = one at a time, in
        # order; more = several chats at once, each chat's updates still one after another.
        self.webhook_concurrency = webhook_concurrency
        self.webhook_acknowledged: list[int] = []  # update ids the webhook answered 2xx
        self.webhook_acknowledged_set: set[int] = set()
        self.webhook_given_up: list[int] = []  # update ids every delivery attempt failed
        self.port = 0
        self._chats: dict[int, SimulatedChat] = {}
        self._commands: dict[tuple[str, str], list[dict[str, str]]] = {}
        self._open_queries: dict[str, SimulatedChat] = {}
        self._pending: list[dict[str, Any]] = []  # unconfirmed (polling) / undelivered (webhook)
        self._update_ids = itertools.count(1)
        self._ids = itertools.count(1)
        self._updates_changed = _Signal()
        self._changed = _Signal()
        self._poll_generation = 0
        self._stopping = False
        self._per_chat_limit: int | None = None
        self._global_limit: int | None = None
        self._sent_at: defaultdict[object, deque[float]] = defaultdict(deque)
        self._forced_429 = (0, 1)  # (answers left, retry_after)
        if telegram_limits:  # Telegram's own: ~30 messages/s per bot, 1/s per chat
            self.set_flood_limit(per_chat_per_second=1, global_per_second=30)
        self._failures: dict[str, list[ApiError]] = {}  # method (lower case) -> errors to answer
        # Every update ever queued, in order; and a hook called with the ids each getUpdates
        # offset confirms (synchronously, before the request is answered: tests kill the bot
        # at that very moment).
        self.update_log: list[dict[str, Any]] = []
        self.on_confirm: Callable[[list[int]], None] | None = None
        self.confirmed: set[int] = set()  # update ids a getUpdates offset confirmed
        # Injected faults (set_faults): the share of calls answered 500 / left hanging.
        self._error_rate, self._stall_rate, self._stall_seconds = 0.0, 0.0, 0.0
        self._fault_random = random.Random(0)
        self.faults_injected: dict[str, int] = {"error": 0, "stall": 0}
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._webhook_task: asyncio.Task[None] | None = None
        # "getme" -> self._api_get_me, ...: Telegram's method names are case-insensitive.
        self._methods: dict[str, Callable[[dict, dict], Awaitable[Any]]] = {
            name.removeprefix("_api_").replace("_", ""): getattr(self, name)
            for name in dir(self)
            if name.startswith("_api_")
        }

    # lifecycle

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/bot"

    @property
    def base_file_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/file/bot"

    async def start(self) -> None:
        app = web.Application(client_max_size=60 * 2**20)  # Telegram accepts 50 MB uploads
        app.router.add_route("*", "/bot{token}/{method}", self._handle_method)
        app.router.add_get("/file/bot{token}/{path:.+}", self._handle_file_download)
        # handler_cancellation: a long poll whose client went away (PTB cancels it on stop)
        # must not linger and hold up runner.cleanup().
        self._runner = web.AppRunner(
            app, handler_cancellation=True, shutdown_timeout=0.5, access_log=None
        )
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.port = self._runner.addresses[0][1]
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
        deliver = (self._deliver_webhook_updates if self.webhook_concurrency <= 1
                   else self._deliver_webhook_concurrently)
        self._webhook_task = asyncio.create_task(deliver())

    async def stop(self) -> None:
        self._stopping = True
        self._updates_changed.notify()  # pending long polls answer now, not at their timeout
        if self._webhook_task:
            self._webhook_task.cancel()
            await asyncio.gather(self._webhook_task, return_exceptions=True)
        if self._session:
            await self._session.close()
        if self._runner:
            await self._runner.cleanup()

    async def __aenter__(self) -> FakeBotApi:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def application_builder(self) -> ApplicationBuilder:
        """An ApplicationBuilder pointed at this fake (token, base_url, base_file_url)."""
        builder = ApplicationBuilder().token(self.token).base_url(self.base_url)
        return builder.base_file_url(self.base_file_url)

    # test-side controls and inspection

    def user(
        self,
        user_id: int,
        first_name: str | None = None,
        *,
        last_name: str | None = None,
        username: str | None = None,
        language_code: str | None = None,
    ) -> SimulatedUser:
        """The simulated user (and private chat) with this id, created on first use."""
        if user_id not in self._chats:
            first_name = first_name or f"User{user_id}"
            names = {"first_name": first_name, "last_name": last_name, "username": username}
            self._chats[user_id] = SimulatedUser(self, user_id, language_code, **names)
        user = self._chats[user_id]
        assert isinstance(user, SimulatedUser)
        return user

    def group(
        self, chat_id: int, title: str = "Test group", *, members: tuple[SimulatedUser, ...] = ()
    ) -> SimulatedGroup:
        """The simulated group with this (negative) id, created on first use."""
        if chat_id not in self._chats:
            self._chats[chat_id] = SimulatedGroup(self, chat_id, title, list(members))
        group = self._chats[chat_id]
        assert isinstance(group, SimulatedGroup)
        return group

    def chat(self, chat_id: int) -> SimulatedChat:
        return self._chats[chat_id]

    def block_user(self, chat_id: int, blocked: bool = True) -> None:
        """Calls about this chat answer 403 "Forbidden: bot was blocked by the user"."""
        self._chats[chat_id].blocked = blocked

    def set_flood_limit(
        self, per_chat_per_second: int | None = None, global_per_second: int | None = None
    ) -> None:
        """Answer 429 to send*/edit* calls beyond these rates (sliding one-second window)."""
        self._per_chat_limit, self._global_limit = per_chat_per_second, global_per_second
        self._sent_at.clear()

    @property
    def flood_refusals(self) -> int:
        """How many calls were answered 429 Too Many Requests."""
        return sum(1 for r in self.requests if r.status == 429)

    def force_429(self, count: int = 1, retry_after: int = 1) -> None:
        """Answer the next `count` calls with 429 (get* and webhook calls excepted)."""
        self._forced_429 = (count, retry_after)

    def fail_method(self, method: str, code: int, description: str, count: int = 1) -> None:
        """Answer the next `count` calls of `method` with this error (HTTP status = code)."""
        errors = self._failures.setdefault(method.lower(), [])
        errors.extend(ApiError(code, description) for _ in range(count))

    def set_faults(
        self,
        *,
        error_rate: float = 0.0,
        stall_rate: float = 0.0,
        stall_seconds: float = 10.0,
        seed: int = 0,
    ) -> None:
        """A failing Bot API, until called again with no rates: `error_rate` of the calls
        (any method) answer 500 Internal Server Error, `stall_rate` hang `stall_seconds`
        (past the client's read timeout) and then answer 502. Both before the call is handled:
        a failed call has no effect (nothing sent, no offset confirmed), so retrying it is
        safe. Counted in `faults_injected`; each failed call is recorded with its status."""
        self._error_rate, self._stall_rate = error_rate, stall_rate
        self._stall_seconds = stall_seconds
        self._fault_random = random.Random(seed)

    def acknowledged(self, update_id: int) -> bool:
        """The bot took this update: a getUpdates offset confirmed it, or the webhook
        answered 2xx for it."""
        return update_id in self.confirmed or update_id in self.webhook_acknowledged_set

    def calls(self, method: str) -> list[dict[str, Any]]:
        """Parameters of every recorded call of `method` (case-insensitive), in order."""
        return [r.params for r in self.requests if r.method.lower() == method.lower()]

    def my_commands(self, language_code: str = "", scope: dict | None = None) -> list[dict]:
        """What setMyCommands stored for this scope (default scope) and language."""
        return self._commands.get(_commands_key(scope, language_code), [])

    @property
    def pending_updates(self) -> list[dict[str, Any]]:
        """Updates not yet confirmed by getUpdates' offset (or delivered to the webhook)."""
        return list(self._pending)

    def file_bytes(self, file_id: str) -> bytes:
        return self.files[file_id].data

    async def wait_for(self, condition: Callable[[], Any], timeout: float = 5.0) -> Any:  # noqa: ASYNC109
        """Wait until condition() is truthy (checked after every Bot API call), return it."""
        return await self._changed.wait_for(condition, timeout)

    # used by simulated chats

    def enqueue_update(self, update: dict[str, Any]) -> dict[str, Any]:
        # Copied now: the chat's stored message may be edited before the bot fetches this.
        update = {"update_id": next(self._update_ids), **copy.deepcopy(update)}
        self.update_log.append(update)
        self._pending.append(update)
        self._updates_changed.notify()
        return update

    def open_callback_query(self, chat: SimulatedChat) -> str:
        query_id = str(4_000_000_000_000 + next(self._ids))
        self._open_queries[query_id] = chat
        return query_id

    def store_file(
        self,
        data: bytes,
        folder: str,
        *,
        filename: str | None = None,
        mime_type: str | None = None,
    ) -> StoredFile:
        number = next(self._ids)
        suffix = filename.rsplit(".", 1)[-1] if filename and "." in filename else "bin"
        file_id, path = f"FAKE{folder[:3].upper()}{number:08d}", f"{folder}/file_{number}.{suffix}"
        stored = StoredFile(file_id, f"U{number:08d}", path, data, filename, mime_type)
        self.files[file_id] = stored
        return stored

    def validate_reply_markup(self, markup: Any) -> dict[str, Any] | None:
        if isinstance(markup, str):
            try:
                markup = json.loads(markup)
            except ValueError:
                raise _bad("can't parse reply keyboard markup JSON object") from None
        for row in (markup or {}).get("inline_keyboard", []):
            for button in row:
                if "callback_data" in button:
                    if not 1 <= len(str(button["callback_data"]).encode()) <= 64:
                        raise _bad("BUTTON_DATA_INVALID")
                elif set(button) <= {"text"}:
                    raise _bad("can't parse inline keyboard button: Text buttons are unallowed")
        return markup

    # HTTP plumbing

    async def _handle_method(self, request: web.Request) -> web.Response:
        if request.match_info["token"] != self.token:
            body = {"ok": False, "error_code": 401, "description": "Unauthorized"}
            return web.json_response(body, status=401)
        method = request.match_info["method"]
        params, files = await _read_params(request)
        record = RecordedRequest(method, params, files)
        self.requests.append(record)
        try:
            handler = self._methods.get(method.lower())
            if handler is None:
                # Telegram answers 404 here, which PTB raises as InvalidToken.
                raise ApiError(404, f"Not Found: method {method} is not emulated by FakeBotApi")
            if self._failures.get(method.lower()):
                raise self._failures[method.lower()].pop(0)
            await self._inject_fault(record)
            self._check_flood(method.lower(), params)
            body = {"ok": True, "result": await handler(params, files)}
        except ApiError as exc:
            record.status, record.description = exc.code, exc.description
            body = {"ok": False, "error_code": exc.code, "description": exc.description}
            if exc.retry_after is not None:
                body["parameters"] = {"retry_after": exc.retry_after}
        self._changed.notify()
        return web.json_response(body, status=record.status)

    async def _inject_fault(self, record: RecordedRequest) -> None:
        if not (self._error_rate or self._stall_rate):
            return
        roll = self._fault_random.random()
        if roll < self._stall_rate:
            self.faults_injected["stall"] += 1
            record.status, record.description = 504, "stalled (fault injected)"
            await asyncio.sleep(self._stall_seconds)  # the client gave up meanwhile
            raise ApiError(502, "Bad Gateway")
        if roll < self._stall_rate + self._error_rate:
            self.faults_injected["error"] += 1
            raise ApiError(500, "Internal Server Error")

    async def _handle_file_download(self, request: web.Request) -> web.Response:
        path = request.match_info["path"]
        stored = next((f for f in self.files.values() if f.file_path == path), None)
        if request.match_info["token"] != self.token or stored is None:
            raise web.HTTPNotFound()
        return web.Response(body=stored.data, content_type="application/octet-stream")

    def _check_flood(self, method: str, params: dict[str, Any]) -> None:
        if method.startswith("get") or "webhook" in method or method == "sendchataction":
            return  # not counted by Telegram's flood limits; force_429() spares them too
        left, retry_after = self._forced_429
        if left > 0:
            self._forced_429 = (left - 1, retry_after)
            raise _too_many(retry_after)
        if not method.startswith(("send", "edit")):
            return
        now = time.monotonic()
        windows = [(self._sent_at["all"], self._global_limit)]
        if "chat_id" in params:
            windows.append((self._sent_at[str(params["chat_id"])], self._per_chat_limit))
        for window, limit in windows:
            while window and now - window[0] >= 1.0:
                window.popleft()
            if limit is not None and len(window) >= limit:
                raise _too_many(max(1, math.ceil(window[0] + 1.0 - now)))
        for window, _ in windows:
            window.append(now)

    async def _deliver_webhook_updates(self) -> None:
        """Push pending updates to the webhook one at a time, in order (Telegram may use up to
        max_connections at once; in order is what tests want)."""
        while True:
            await self._updates_changed.wait_for(lambda: self.webhook and self._pending, None)
            update, hook = self._pending[0], self.webhook
            assert hook is not None
            await self._post_update(hook, update)
            # Delivered or given up on; it may be gone already (drop_pending_updates).
            if self._pending and self._pending[0] is update:
                self._pending.pop(0)
            self._changed.notify()

    async def _deliver_webhook_concurrently(self) -> None:
        """Up to `webhook_concurrency` deliveries at once, never two of one chat, each chat's
        updates in order (as Telegram does with max_connections > 1)."""
        busy: dict[object, asyncio.Task[None]] = {}

        def ready() -> dict[str, Any] | None:
            if not self.webhook or len(busy) >= self.webhook_concurrency:
                return None
            seen: set[object] = set()
            for update in self._pending:
                chat = _update_chat(update)
                if chat not in busy and chat not in seen:
                    return update
                seen.add(chat)
            return None

        async def deliver(chat: object, update: dict[str, Any], hook: dict[str, Any]) -> None:
            try:
                await self._post_update(hook, update)
            finally:
                with contextlib.suppress(ValueError):
                    self._pending.remove(update)
                del busy[chat]
                self._changed.notify()
                self._updates_changed.notify()

        try:
            while True:
                update = await self._updates_changed.wait_for(ready, None)
                chat, hook = _update_chat(update), self.webhook
                assert hook is not None
                busy[chat] = asyncio.create_task(deliver(chat, update, hook))
        finally:
            for task in list(busy.values()):
                task.cancel()

    async def _post_update(self, hook: dict[str, Any], update: dict[str, Any]) -> bool:
        assert self._session is not None
        headers = {SECRET_HEADER: hook["secret_token"]} if hook.get("secret_token") else {}
        for attempt in range(self.webhook_retries + 1):
            try:
                async with self._session.post(hook["url"], json=update, headers=headers) as resp:
                    if resp.status < 300:
                        self.webhook_acknowledged.append(update["update_id"])
                        self.webhook_acknowledged_set.add(update["update_id"])
                        return True
                    error = f"Wrong response from the webhook: {resp.status} {resp.reason}"
            except Exception as exc:  # whatever the bot's side does, delivery goes on
                error = f"Connection failed: {exc!r}"
            self.webhook_errors.append(error)
            hook["last_error"] = (_now(), error)
            self._changed.notify()
            await asyncio.sleep(self.webhook_retry_delay * 2**attempt)
        self.webhook_given_up.append(update["update_id"])
        return False

    # Bot API methods, _api_<snake_case name>: (params, uploaded files) -> result, or raise

    async def _api_get_me(self, params: dict, files: dict) -> dict[str, Any]:
        return self.bot_user

    async def _api_get_updates(self, params: dict, files: dict) -> list[dict[str, Any]]:
        if self.webhook:
            raise ApiError(
                409,
                "Conflict: can't use getUpdates method while webhook is active; "
                "use deleteWebhook to delete the webhook first",
            )
        offset = int(params.get("offset") or 0)
        if offset > 0:  # confirms every update before `offset`
            confirmed = [u["update_id"] for u in self._pending if u["update_id"] < offset]
            self._pending = [u for u in self._pending if u["update_id"] >= offset]
            self.confirmed.update(confirmed)
            if confirmed and self.on_confirm is not None:
                self.on_confirm(confirmed)
        elif offset < 0:
            self._pending = self._pending[offset:]
        self._changed.notify()  # before the long poll: tests may wait for confirmation
        limit = min(max(int(params.get("limit") or 100), 1), 100)
        # A newer getUpdates ends this one with 409, as Telegram does.
        self._poll_generation += 1
        generation = self._poll_generation
        self._updates_changed.notify()

        def answerable() -> bool:
            superseded = generation != self._poll_generation
            return bool(self._pending or self._stopping or self.webhook or superseded)

        with contextlib.suppress(TimeoutError):
            await self._updates_changed.wait_for(answerable, float(params.get("timeout") or 0))
        if generation != self._poll_generation:
            raise ApiError(
                409,
                "Conflict: terminated by other getUpdates request; "
                "make sure that only one bot instance is running",
            )
        return [] if self.webhook else self._pending[:limit]

    async def _api_set_webhook(self, params: dict, files: dict) -> bool:
        url = params.get("url") or ""
        if not url:
            return await self._api_delete_webhook(params, files)
        # Telegram demands HTTPS on 443/80/88/8443; the fake accepts plain HTTP on loopback.
        if not url.startswith(("http://", "https://")):
            raise _bad("bad webhook: An HTTPS URL must be provided for webhook")
        secret = params.get("secret_token")
        if secret is not None and not re.fullmatch(r"[A-Za-z0-9_-]{1,256}", str(secret)):
            raise _bad("secret token contains unallowed characters")
        max_connections = int(params.get("max_connections") or 40)
        if not 1 <= max_connections <= 100:
            raise _bad("bad webhook: max_connections must be between 1 and 100")
        if params.get("drop_pending_updates"):
            self._pending.clear()
        self.webhook = {"url": url, "secret_token": secret, "max_connections": max_connections}
        self.webhook["allowed_updates"] = params.get("allowed_updates")
        self._updates_changed.notify()
        return True

    async def _api_delete_webhook(self, params: dict, files: dict) -> bool:
        if params.get("drop_pending_updates"):
            self._pending.clear()
        self.webhook = None
        self._updates_changed.notify()
        return True

    async def _api_get_webhook_info(self, params: dict, files: dict) -> dict[str, Any]:
        info: dict[str, Any] = {"url": "", "has_custom_certificate": False}
        info["pending_update_count"] = len(self._pending)
        if self.webhook:
            info.update(url=self.webhook["url"], max_connections=self.webhook["max_connections"])
            if self.webhook["allowed_updates"]:
                info["allowed_updates"] = self.webhook["allowed_updates"]
            if "last_error" in self.webhook:
                info["last_error_date"], info["last_error_message"] = self.webhook["last_error"]
        return info

    def _chat(self, params: dict[str, Any]) -> SimulatedChat:
        chat_id = params.get("chat_id")
        if chat_id in (None, ""):
            raise _bad("chat_id is empty")
        try:
            chat = self._chats.get(int(chat_id))
        except (TypeError, ValueError):
            chat = None  # "@channelusername" chats are not simulated
        if chat is None:
            raise _bad("chat not found")
        if chat.blocked:
            raise ApiError(403, "Forbidden: bot was blocked by the user")
        return chat

    def _message(self, params: dict[str, Any], action: str) -> tuple[SimulatedChat, ChatMessage]:
        chat = self._chat(params)
        if params.get("inline_message_id"):
            raise _bad("inline messages are not emulated by FakeBotApi")
        message = chat._by_id.get(int(params.get("message_id") or 0))
        if message is None or message.deleted:
            raise _bad(f"message to {action} not found")
        if action == "edit" and not message.from_bot:
            raise _bad("message can't be edited")
        return chat, message

    @staticmethod
    def _formatted(params: dict[str, Any], key: str, limit: int) -> dict[str, Any]:
        """Check text or caption as Telegram does: {key: text, key's entities} (None = none)."""
        entities_key = "entities" if key == "text" else "caption_entities"
        if key == "caption" and not params.get(key):
            return {key: None, entities_key: None}
        text, entities = str(params.get(key) or ""), params.get(entities_key)
        if str(params.get("parse_mode") or "").upper() == "HTML":
            try:
                text, entities = parse_html(text)
            except ValueError as exc:
                raise _bad(f"can't parse entities: {exc}") from None
        if not text.strip():
            raise _bad("message text is empty")
        if len(text) > limit:  # counted after entity parsing
            raise _bad("message is too long" if key == "text" else "message caption is too long")
        return {key: text, entities_key: entities or None}

    async def _api_send_message(self, params: dict, files: dict) -> dict[str, Any]:
        chat = self._chat(params)
        content = {k: v for k, v in self._formatted(params, "text", 4096).items() if v}
        return chat._post_bot_message(content, params).data

    async def _api_edit_message_text(self, params: dict, files: dict) -> dict[str, Any]:
        chat, message = self._message(params, "edit")
        if "text" not in message.data:
            raise _bad("there is no text in the message to edit")
        changes = self._formatted(params, "text", 4096)
        # As in Telegram, an edit without reply_markup removes the inline keyboard.
        changes["reply_markup"] = self.validate_reply_markup(params.get("reply_markup"))
        return chat._edit(message, changes)

    async def _api_edit_message_reply_markup(self, params: dict, files: dict) -> dict[str, Any]:
        chat, message = self._message(params, "edit")
        markup = self.validate_reply_markup(params.get("reply_markup"))
        return chat._edit(message, {"reply_markup": markup})

    async def _api_delete_message(self, params: dict, files: dict) -> bool:
        chat, message = self._message(params, "delete")
        message.deleted = True
        chat._changed.notify()
        return True

    async def _api_answer_callback_query(self, params: dict, files: dict) -> bool:
        query_id = str(params.get("callback_query_id") or "")
        if query_id not in self._open_queries:
            raise _bad("query is too old and response timeout expired or query ID is invalid")
        if len(str(params.get("text") or "")) > 200:
            raise _bad("MESSAGE_TOO_LONG")
        chat = self._open_queries.pop(query_id)
        chat.callback_answers.append({**params, "callback_query_id": query_id})
        chat._changed.notify()
        return True

    async def _api_send_document(self, params: dict, files: dict[str, Upload]) -> dict[str, Any]:
        chat = self._chat(params)
        document = params.get("document")
        part = "document"
        if isinstance(document, str) and document.startswith("attach://"):
            part = document.removeprefix("attach://")
        if (upload := files.get(part)) is not None:
            stored = self.store_file(
                upload.data, "documents", filename=upload.filename, mime_type=upload.mime_type
            )
        elif document in self.files:
            stored = self.files[document]  # sent again by file_id
        elif document is None:
            raise _bad("there is no document in the request")
        else:
            raise _bad("wrong file identifier/HTTP URL specified")
        content = {"document": stored.as_json()}
        content.update((k, v) for k, v in self._formatted(params, "caption", 1024).items() if v)
        return chat._post_bot_message(content, params).data

    async def _api_get_file(self, params: dict, files: dict) -> dict[str, Any]:
        stored = self.files.get(str(params.get("file_id")))
        if stored is None:
            raise _bad("invalid file_id")
        if len(stored.data) > 20 * 2**20:
            raise _bad("file is too big")
        return {**stored.as_json(file_name=None, mime_type=None), "file_path": stored.file_path}

    async def _api_set_my_commands(self, params: dict, files: dict) -> bool:
        commands = params.get("commands") or []
        if len(commands) > 100:
            raise _bad("too many commands")
        for command in commands:
            if not re.fullmatch(r"[a-z0-9_]{1,32}", str(command.get("command", ""))):
                raise _bad("BOT_COMMAND_INVALID")
            if not 1 <= len(str(command.get("description", ""))) <= 256:
                raise _bad("command description must be 1-256 characters long")
        key = _commands_key(params.get("scope"), params.get("language_code"))
        self._commands[key] = [
            {"command": c["command"], "description": c["description"]} for c in commands
        ]
        return True

    async def _api_get_my_commands(self, params: dict, files: dict) -> list[dict[str, str]]:
        return self.my_commands(params.get("language_code") or "", params.get("scope"))

    async def _api_delete_my_commands(self, params: dict, files: dict) -> bool:
        self._commands.pop(_commands_key(params.get("scope"), params.get("language_code")), None)
        return True

    async def _api_send_chat_action(self, params: dict, files: dict) -> bool:
        chat = self._chat(params)
        if not params.get("action"):
            raise _bad("wrong parameter action in request")
        chat.chat_actions.append(params["action"])
        return True


@contextlib.asynccontextmanager
async def polling(application: Application, timeout: float = 10) -> AsyncIterator[Application]:  # noqa: ASYNC109
    """Run `application` with long polling the way capbot does (no run_polling(), so other
    work can share the loop) and stop it in reverse order."""
    async with application:
        await application.start()
        assert application.updater is not None
        await application.updater.start_polling(poll_interval=0, timeout=timeout)
        try:
            yield application
        finally:
            await application.updater.stop()
            await application.stop()


def _commands_key(scope: Any, language_code: Any) -> tuple[str, str]:
    if isinstance(scope, str):
        scope = json.loads(scope)
    return json.dumps(scope or {"type": "default"}, sort_keys=True), str(language_code or "")


def _decode_form_value(name: str, value: str) -> Any:
    if name in _TEXT_PARAMS:
        return value
    try:
        return json.loads(value)
    except ValueError:
        return value  # e.g. "@channel", "attach://...", a file_id


async def _read_params(request: web.Request) -> tuple[dict[str, Any], dict[str, Upload]]:
    """Parameters from the query string and a JSON, urlencoded or multipart body."""
    form: dict[str, str] = dict(request.query)
    body: dict[str, Any] = {}
    files: dict[str, Upload] = {}
    if request.content_type == "application/json" and request.can_read_body:
        body = await request.json()
    elif request.content_type == "multipart/form-data":
        async for part in await request.multipart():
            if not isinstance(part, aiohttp.BodyPartReader) or part.name is None:
                continue
            if part.filename is None:
                form[part.name] = await part.text()
            else:
                mime = part.headers.get(aiohttp.hdrs.CONTENT_TYPE)
                files[part.name] = Upload(part.filename, bytes(await part.read()), mime)
    elif request.can_read_body:
        form.update((k, v) for k, v in (await request.post()).items() if isinstance(v, str))
    return {**{k: _decode_form_value(k, v) for k, v in form.items()}, **body}, files
