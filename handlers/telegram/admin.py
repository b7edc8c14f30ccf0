"""Secretariat commands on Telegram: /export (the CSV zip as a document) and /stats."""

from __future__ import annotations

import io
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from telegram.constants import ChatAction

from bot.i18n import LANGUAGES
from handlers.telegram.translate import TelegramEvent

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from bot.i18n import Translations
    from bot.questionnaire import Questionnaire
    from bot.service import ConversationService
    from handlers.telegram.sender import TelegramSender

logger = logging.getLogger(__name__)

MAX_UPLOAD = 49 * 2**20  # Telegram takes documents up to 50 MB from bots
Notify = Callable[[int, str, str, str | None], Awaitable[None]]
_SPLIT_WORDS = frozenset({"split", "split-multi", "split_multi", "--split-multi"})
_KEYS = {"status", "since", "until", "channel", "country", "questionnaire", "lang",
         "split-multi", "split_multi"}


def parse_export_args(args: Sequence[str]):
    """`/export all fr split country=KE since=2024-01-01` -> ExportOptions (the CLI's options
    in a simple form: bare words for status, language, channel and split; key=value or
    --key value for the rest). Raises ExportOptionError naming the option."""
    from reports.options import CHANNELS, STATUSES, ExportOptionError, ExportOptions

    given: dict[str, str | bool] = {}

    def put(key: str, value: str | bool) -> None:
        key = key.replace("-", "_")
        if key in given and given[key] != value:
            raise ExportOptionError(f"--{key.replace('_', '-')}", "given twice")
        given[key] = value

    tokens = list(args)
    while tokens:
        token = tokens.pop(0)
        word = token.strip().lower()
        if not word:
            continue
        if word in _SPLIT_WORDS:
            put("split_multi", True)
        elif word in STATUSES:
            put("status", word)
        elif word in LANGUAGES:
            put("lang", word)
        elif word in CHANNELS:
            put("channel", word)
        elif "=" in token:
            key, _, value = token.lstrip("-").partition("=")
            if key.lower() not in _KEYS:
                raise ExportOptionError(f"--{key}", "unknown option")
            put(key.lower(), value)
        elif token.startswith("--") and token[2:].lower() in _KEYS and tokens:
            put(token[2:].lower(), tokens.pop(0))
        else:
            raise ExportOptionError("/export", f"unknown option {token!r}")
    split = bool(given.pop("split_multi", False))
    return ExportOptions.parse(split_multi=split, **given)  # type: ignore[arg-type]


class AdminCommands:
    """Runs /export and /stats for the user ids in CAPBOT_TELEGRAM_ADMINS; others are refused
    politely and get no data. Every command is recorded in the inbound log."""

    def __init__(self, *, service: ConversationService, translations: Translations,
                 database: Any, questionnaires: Mapping[str, Questionnaire],
                 admins: Iterable[int], sender: TelegramSender, notify: Notify) -> None:
        self.service = service
        self.translations = translations
        self.database = database  # read by the reports (storage.db.Database)
        self.questionnaires = questionnaires
        self.admins = frozenset(admins)
        self.sender = sender
        self.notify = notify

    @property
    def questionnaire(self) -> Questionnaire:
        """The default questionnaire: what /stats and /export show unless told otherwise."""
        return self.questionnaires[self.service.default_questionnaire]

    def is_admin(self, user_id: int | None) -> bool:
        return user_id is not None and user_id in self.admins

    async def handle(self, event: TelegramEvent, lang: str) -> None:
        allowed = self.is_admin(event.user_id)
        fresh = await self.service.record_unprocessed(
            channel="telegram", message_id=event.message_id, user_id=event.address,
            kind="command", payload=event.raw, status="processed" if allowed else "rejected",
            reason=f"/{event.command} by an admin" if allowed else "not an admin")
        if not fresh or event.chat_id is None:
            return  # a redelivered update: done the first time
        tr = self.translations
        if not allowed:
            logger.info("refused /%s from user %s", event.command, event.user_id)
            await self.notify(event.chat_id, tr.t(lang, "telegram.admin_only"), lang, None)
            return
        if event.command == "stats":
            await self._stats(event.chat_id, lang)
        elif event.command == "export":
            await self._export(event.chat_id, event.args, lang)

    async def _stats(self, chat: int, lang: str) -> None:
        from reports.stats import collect_stats, format_stats

        tr = self.translations
        try:
            stats = await collect_stats(self.database, self.questionnaire, tr)
            text = format_stats(stats, lang)
        except Exception:
            logger.exception("/stats failed")
            await self.notify(chat, tr.t(lang, "telegram.stats_failed"), lang, None)
            return
        await self.notify(chat, text, lang, "pre")

    async def _export(self, chat: int, args: Sequence[str], lang: str) -> None:
        from reports.csvfiles import export_zip
        from reports.options import ExportOptionError

        tr = self.translations
        try:
            options = parse_export_args(args)
            if options.questionnaire is None:
                options = replace(options, questionnaire=self.questionnaire.id)
            options.pick_questionnaire(self.questionnaires)
        except ExportOptionError as exc:
            text = tr.t(lang, "telegram.export_failed", error=str(exc))
            await self.notify(chat, text + "\n" + tr.t(lang, "telegram.export_usage"), lang,
                              None)
            return
        try:
            await self.sender.call(self.sender.bot.send_chat_action, chat,
                                   ChatAction.UPLOAD_DOCUMENT)
        except Exception:  # only a courtesy
            logger.debug("chat action failed", exc_info=True)
        buffer = io.BytesIO()
        try:
            summary = await export_zip(self.database, self.questionnaires, tr, options,
                                       buffer)
        except Exception as exc:
            logger.exception("/export failed")
            error = " ".join(str(exc).split())[:300] or type(exc).__name__
            await self.notify(chat, tr.t(lang, "telegram.export_failed", error=error), lang,
                              None)
            return
        data = buffer.getvalue()
        if len(data) > MAX_UPLOAD:
            size = f"{len(data) / 2**20:.0f}"
            await self.notify(chat, tr.t(lang, "telegram.export_too_large", size=size), lang,
                              None)
            return
        stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M")
        filename = f"capbot-{summary.questionnaire}-{options.status}-{stamp}.zip"
        caption = tr.t(lang, "telegram.export_caption", questionnaire=summary.questionnaire,
                       status=options.status, submissions=summary.submissions,
                       activities=summary.activities, answers=summary.answers)
        logger.info("/export: %s (%d bytes) to chat %s", filename, len(data), chat)
        await self.sender.send_document(chat, data, filename, caption)
