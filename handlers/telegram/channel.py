"""The Telegram channel: python-telegram-bot driven inside capbot's event loop, as a courier.

Updates come by long polling (default) or by webhook (CAPBOT_TELEGRAM_WEBHOOK_URL) through
handlers.telegram.intake, which confirms each to Telegram only after it is kept. They are
processed concurrently across chats and in order within a chat, translated to neutral inbound
messages and handed to the conversation service; a chat past the inbound rate limit is recorded
but not answered. Replies leave through the outbox dispatcher after the turn is committed,
paced to Telegram's flood limits.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from telegram import BotCommand, BotCommandScopeChat, Update
from telegram.error import BadRequest, InvalidToken, NetworkError, TelegramError
from telegram.ext import Application, ApplicationBuilder

from bot.config import ConfigError
from bot.i18n import LANGUAGES
from bot.outbox import OutboxDispatcher, OutboxItem
from bot.webhook import webhook_secret
from handlers.telegram.admin import AdminCommands
from handlers.telegram.intake import Poller, WebhookServer
from handlers.telegram.ordering import PerChatUpdateProcessor
from handlers.telegram.ratelimit import ChatRateLimiter
from handlers.telegram.request import AiohttpRequest
from handlers.telegram.sender import TelegramSender
from handlers.telegram.throttle import InboundThrottle
from handlers.telegram.translate import (
    CHANNEL,
    CallbackCodec,
    TelegramEvent,
    language_of,
    parse_update,
)

if TYPE_CHECKING:
    from collections.abc import Mapping

    from bot.config import Settings
    from bot.i18n import Translations
    from bot.leaders import Leaders, Leadership
    from bot.questionnaire import Questionnaire
    from bot.service import ConversationService

logger = logging.getLogger(__name__)

ALLOWED_UPDATES = ("message", "edited_message", "callback_query", "my_chat_member",
                   "channel_post")
USER_COMMANDS = ("start", "back", "skip", "review", "language", "help", "cancel", "email",
                 "stop")
ADMIN_COMMANDS = ("export", "stats")
POLLING_JOB = "telegram-polling"  # the leader job of long polling
GROUP_NOTE_INTERVAL = 600.0  # seconds: explain at most this often per group


def file_url(api_url: str) -> str:
    """Telegram serves files under /file/bot<token>/ next to /bot<token>/."""
    base = api_url.rstrip("/")
    return base[: -len("bot")] + "file/bot" if base.endswith("/bot") else base + "/file/bot"


class NotKeptError(Exception):
    """An update that could be stored nowhere; it must not be confirmed to Telegram."""


class TelegramChannel:
    """`capbot serve`'s Telegram channel: `await start()`, `await stop()`. Built by
    bot/server.py (`telegram_channel`) with what it uses: the service (turns, records,
    notices), the settings, the catalogs, the questionnaires (button data, /export) and the
    database (its outbox rows, read by /export and /stats)."""

    name = CHANNEL

    def __init__(self, *, service: ConversationService, settings: Settings,
                 translations: Translations, questionnaires: Mapping[str, Questionnaire],
                 database: Any, leaders: Leaders | None = None, concurrency: int = 256,
                 poll_timeout: float = 10.0, start_attempts: int = 5) -> None:
        self.service = service
        # Long polling is one consumer: with `leaders`, only the replica leading the
        # "telegram-polling" job polls (bot/leaders.py). Webhook mode needs no leader.
        self.leaders = leaders
        self._polling: Leadership | None = None
        self.settings = settings
        self.translations = translations
        self.start_attempts = start_attempts
        if not settings.telegram_token:
            raise ValueError("TelegramChannel needs CAPBOT_TELEGRAM_TOKEN")
        self.poll_timeout = poll_timeout
        self.codec = CallbackCodec.for_questionnaires(questionnaires.values())
        self.processor = PerChatUpdateProcessor(concurrency)
        self.application = self._build_application()
        self.sender = TelegramSender(self.application.bot, self.codec)
        self.dispatcher = OutboxDispatcher(database, CHANNEL, self.sender.send,
                                           on_unreachable=self._unreachable,
                                           max_attempts=30, concurrency=concurrency,
                                           lease=settings.outbox_lease_seconds,
                                           sweep_interval=settings.outbox_sweep_seconds)
        self.admin = AdminCommands(
            service=service, translations=translations, database=database,
            questionnaires=questionnaires, admins=settings.telegram_admins,
            sender=self.sender, notify=self.notify)
        self.throttle = InboundThrottle(self.settings.telegram_inbound_limit,
                                        self.settings.telegram_inbound_window)
        self._intake: Poller | WebhookServer | None = None
        self._running = False
        self._listening = False
        self._tasks: set[asyncio.Task] = set()
        self._group_notes: dict[int, float] = {}
        self._bot_id = 0
        self._bot_username: str | None = None
        self.updates_handled = 0  # for monitoring, and for tests to wait on
        self._handled = asyncio.Event()

    # -- lifecycle ------------------------------------------------------------------------------

    def _build_application(self) -> Application:
        s = self.settings
        # aiohttp for both (PTB needs two instances); the proxy, if any, for both.
        self._updates_request = AiohttpRequest(proxy=s.telegram_proxy)
        self._request = AiohttpRequest(proxy=s.telegram_proxy)
        builder = (ApplicationBuilder().token(s.telegram_token)
                   .request(self._request)
                   .get_updates_request(self._updates_request)
                   .updater(None)  # handlers.telegram.intake fetches, and confirms when kept
                   .job_queue(None))
        if s.telegram_api_url:
            builder = builder.base_url(s.telegram_api_url).base_file_url(
                file_url(s.telegram_api_url))
        if s.telegram_rate_limit or s.telegram_chat_rate > 0:
            builder = builder.rate_limiter(ChatRateLimiter(
                overall_max_rate=30 if s.telegram_rate_limit else 0,
                chat_rate=s.telegram_chat_rate, chat_burst=s.telegram_chat_burst))
        return builder.build()

    @property
    def webhook_mode(self) -> bool:
        return bool(self.settings.telegram_webhook_url)

    async def start(self) -> None:
        await self._initialize(self.start_attempts)
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _initialize(self, attempts: int = 5) -> None:
        """getMe, with a few retries while the network comes up; a rejected token is a
        configuration error."""
        s = self.settings
        for attempt in range(1, attempts + 1):
            try:
                await self.application.initialize()
                return
            except InvalidToken as exc:
                await self._close_requests()
                raise ConfigError(f"CAPBOT_TELEGRAM_TOKEN: rejected by the Bot API ({exc})"
                                  ) from None
            except NetworkError as exc:
                await self._close_requests()
                where = s.telegram_api_url or "https://api.telegram.org/bot"
                if attempt == attempts:
                    raise ConfigError(f"telegram: cannot reach the Bot API at {where} ({exc});"
                                      " check the network or CAPBOT_TELEGRAM_API_URL") from None
                logger.warning("telegram: Bot API unreachable (%s); retrying", exc)
                await asyncio.sleep(min(30.0, 2.0 ** attempt))

    async def _close_requests(self) -> None:
        for request in (self._request, self._updates_request):
            with contextlib.suppress(Exception):
                await request.shutdown()

    async def _start(self) -> None:
        application = self.application
        self._bot_id, self._bot_username = application.bot.id, application.bot.username
        if not self._listening:
            self.service.on_outbox(self._on_outbox)
            self._listening = True
        self._running = True
        await self.dispatcher.start()  # replies left pending by the last run go first
        await application.start()
        s = self.settings
        if self.webhook_mode:
            url = s.telegram_webhook_url
            assert url is not None
            self._intake = WebhookServer(
                application.bot, self.dispatch, url=url, listen=s.telegram_webhook_listen,
                port=s.telegram_webhook_port, path=urlsplit(url).path,
                secret=webhook_secret(s), allowed_updates=ALLOWED_UPDATES, max_connections=40)
            await self._intake.start()
            logger.info("telegram: webhook on %s:%s for %s", s.telegram_webhook_listen,
                        s.telegram_webhook_port, url)
        elif self.leaders is not None:
            self._polling = await self.leaders.run(POLLING_JOB, self._poller)
        else:
            await self._poller().start()
        await self.set_commands()

    def _poller(self) -> Poller:
        """A fresh poller, for each time this replica leads the polling."""
        self._intake = Poller(self.application.bot, self.dispatch, timeout=self.poll_timeout,
                              allowed_updates=ALLOWED_UPDATES)
        logger.info("telegram: long polling as @%s", self._bot_username)
        return self._intake

    async def stop(self) -> None:
        """Stop fetching, finish the updates already fetched, send what they committed."""
        application = self.application
        if self._polling is not None:
            await self._polling.stop()  # stops its poller
            self._polling = None
        elif self._intake is not None:
            await self._intake.stop()
        self._intake = None
        if application.running:
            await application.stop()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(task, 5)
        self._running = False
        await self.dispatcher.stop()
        await application.shutdown()

    async def wait_idle(self) -> None:
        """Until every reply committed so far has been sent (tests, benchmarks)."""
        await self.dispatcher.wait_idle()

    def _on_outbox(self, items: list[OutboxItem]) -> None:
        if self._running:
            self.dispatcher.enqueue(items)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:  # retrieved: logged here
            logger.error("telegram: background task failed", exc_info=task.exception())

    async def set_commands(self) -> None:
        """The command menu in each language (Telegram picks by the user's app language);
        admins also see /export and /stats."""
        tr = self.translations
        bot = self.application.bot

        def commands(lang: str, names: tuple[str, ...]) -> list[BotCommand]:
            return [BotCommand(n, tr.t(lang, f"telegram.commands.{n}")[:256]) for n in names]

        calls: list[tuple[list[BotCommand], Any, str | None]] = [
            (commands("en", USER_COMMANDS), None, None)]
        calls += [(commands(lang, USER_COMMANDS), None, lang) for lang in LANGUAGES]
        for admin in self.settings.telegram_admins:
            scope = BotCommandScopeChat(admin)
            everything = USER_COMMANDS + ADMIN_COMMANDS
            calls.append((commands("en", everything), scope, None))
            calls += [(commands(lang, everything), scope, lang) for lang in LANGUAGES]
        for listed, scope, lang in calls:
            try:
                await bot.set_my_commands(listed, scope=scope, language_code=lang)
            except BadRequest as exc:  # e.g. an admin who never opened the bot
                logger.info("setMyCommands (%s, %s): %s", scope, lang, exc)
            except TelegramError as exc:
                logger.warning("setMyCommands failed: %s", exc)
                return

    # -- updates ------------------------------------------------------------------------------

    async def dispatch(self, update: Update | None, data: dict) -> None:
        """Handle one update (PTB's, or None if PTB could not read it; and the JSON Telegram
        sent) in its chat's turn; returns once it is kept (its turn or its record committed),
        raises if it could not be kept."""
        await self.processor.process_update(update, self._process(data))

    async def _process(self, data: dict) -> None:
        try:
            await self._handle_update(data)
        finally:
            self.updates_handled += 1
            self._handled.set()

    async def wait_handled(self, count: int) -> None:
        """Until `count` updates have been handled in all and their replies sent."""
        while self.updates_handled < count:
            self._handled.clear()
            await self._handled.wait()
        await self.dispatcher.wait_idle()

    async def _handle_update(self, data: dict) -> None:
        raw = json.dumps(data, ensure_ascii=False, separators=(",", ":"))  # as Telegram sent it
        update_id = data.get("update_id")
        try:
            event = parse_update(data, bot_id=self._bot_id, bot_username=self._bot_username,
                                 codec=self.codec, raw=raw)
        except Exception as exc:
            logger.exception("cannot translate update %s", update_id)
            await self._record(f"{self._bot_id}:{update_id}", None, "unknown", raw,
                               "failed", f"{type(exc).__name__}: {exc}")
            return
        if event.callback_query_id:
            self._spawn(self._answer_query(event.callback_query_id))
        if event.route in ("turn", "admin", "edited") and event.chat_id is not None:
            verdict = self.throttle.check(event.chat_id)
            if verdict != "pass":
                await self._throttled(event, verdict == "notice")
                return
        if event.route == "turn":
            await self._turn(event)
        elif event.route == "admin":
            await self.admin.handle(event, await self.chat_language(event))
        elif event.route == "group":
            await self._group(event)
        elif event.route == "edited":
            if await self._record_event(event, "ignored") and event.chat_id is not None:
                lang = await self.chat_language(event)
                await self.notify(event.chat_id, self.translations.t(
                    lang, "telegram.edited_ignored"), lang)
        elif event.route == "member":
            await self._member(event)
        else:
            await self._record_event(event, "ignored")

    async def _turn(self, event: TelegramEvent) -> None:
        inbound = event.inbound
        assert inbound is not None
        if inbound.kind == "start" and inbound.payload:  # t.me/<bot>?start=<invitation token>
            secret = (self.settings.secret_key or "").encode() or None
            result = await self.service.links.start_with_token(inbound, secret)
        else:
            result = await self.service.handle(inbound)
        if not result.kept:
            # Stored nowhere, not even in the spool: left unconfirmed, so Telegram still holds
            # it and hands it out again (polling retries it; a webhook answers 500). No note
            # to the user: they would send it again and answer the next question with it.
            raise NotKeptError(f"update {event.update_id}: the database and the spool refused it")
        if result.failed and not result.outbox and event.chat_id is not None:
            # The database refused the turn, so no reply could be committed: say so directly.
            lang = await self.chat_language(event, stored=False)
            self._spawn(self._say_directly(event.chat_id, self.translations.t(
                lang, "error_internal")))

    async def _throttled(self, event: TelegramEvent, notice: bool) -> None:
        """Over the chat's inbound rate: keep the update with the reason, answer at most once."""
        t = self.throttle
        reason = f"over {t.limit} updates in {t.window:g} s from this chat; not answered"
        fresh = await self._record(event.message_id, event.address, event.kind, event.raw,
                                   "throttled", reason)
        if fresh and notice and event.chat_id is not None:
            logger.info("telegram: chat %s is over the inbound rate; throttled", event.chat_id)
            lang = await self.chat_language(event)
            await self.notify(event.chat_id, self.translations.t(
                lang, "telegram.throttled"), lang)

    async def _group(self, event: TelegramEvent) -> None:
        fresh = await self._record_event(event, "rejected")
        if not fresh or not event.explain or event.chat_id is None:
            return
        now = time.monotonic()
        if now - self._group_notes.get(event.chat_id, -GROUP_NOTE_INTERVAL) < \
                GROUP_NOTE_INTERVAL:
            return
        self._group_notes[event.chat_id] = now
        lang = language_of(event.language_hint)
        bot = f"@{self._bot_username}" if self._bot_username else "@bot"
        await self.notify(event.chat_id,
                          self.translations.t(lang, "telegram.group_refused", bot=bot), lang)

    async def _member(self, event: TelegramEvent) -> None:
        if not await self._record_event(event, "processed") or event.address is None:
            return
        status = event.member_status
        if status in ("kicked", "member"):
            await self._set_unreachable(event.address, status == "kicked")

    # -- helpers -------------------------------------------------------------------------------

    async def chat_language(self, event: TelegramEvent, *, stored: bool = True) -> str:
        """The language of the chat's last reply (a cache), else the respondent's stored
        conversation language (one indexed read, for a notice; `stored=False` when the
        database is what failed), else the user's Telegram app language."""
        chat = event.chat_id
        if chat is not None and chat in self.sender.languages:
            return self.sender.languages[chat]
        if stored and event.address is not None:
            try:
                lang = await self.service.language_of(CHANNEL, event.address)
            except Exception as exc:  # only a notice's language: the app's will do
                logger.warning("telegram: cannot read chat %s's language: %s", chat, exc)
                lang = None
            if lang in LANGUAGES:
                return lang
        return language_of(event.language_hint)

    async def notify(self, chat: int, text: str, lang: str, fmt: str | None = None) -> None:
        """A message outside a conversation turn, committed to the outbox and then sent."""
        payload: dict[str, Any] = {"text": text, "kind": "info", "language": lang,
                                   "question": None, "slot": None, "multi": False,
                                   "progress": None, "choices": []}
        if fmt:
            payload["format"] = fmt
        await self.service.send_later([{"channel": CHANNEL, "address": str(chat),
                                            "payload": payload}])

    async def _record_event(self, event: TelegramEvent, status: str) -> bool:
        return await self._record(event.message_id, event.address, event.kind, event.raw,
                                  status, event.reason or None)

    async def _record(self, message_id: str, address: str | None, kind: str, raw: str,
                      status: str, reason: str | None) -> bool:
        """Keep an update that does not reach the engine; False if it was seen before. Raises
        when the database refuses it: the update is then not confirmed to Telegram."""
        return await self.service.record_unprocessed(
            channel=CHANNEL, message_id=message_id, user_id=address, kind=kind[:16],
            payload=raw, status=status, reason=reason or "")

    async def _say_directly(self, chat: int, text: str) -> None:
        try:
            await self.sender.send_text(chat, text)
        except Exception as exc:
            logger.warning("telegram: cannot tell chat %s about a failed turn: %s", chat, exc)

    async def _answer_query(self, query_id: str) -> None:
        """Stops the button's spinner; a failure costs only that (the turn goes on)."""
        try:
            await self.sender.answer_query(query_id)
        except Exception as exc:  # too old, answered, network, blocked: mapped by sender.call
            logger.debug("answerCallbackQuery %s: %s", query_id, exc)

    async def _unreachable(self, item: OutboxItem, reason: str) -> None:
        await self._set_unreachable(item.address, True)

    async def _set_unreachable(self, address: str, unreachable: bool) -> None:
        changed = await self.service.set_unreachable(CHANNEL, address, unreachable)
        if changed:
            logger.info("telegram: chat %s is %s", address,
                        "unreachable (bot blocked)" if unreachable else "reachable again")
