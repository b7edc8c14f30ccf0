"""`capbot serve`: run every configured channel in one event loop until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from typing import TYPE_CHECKING, Any, Protocol

from bot.app import App, build_app
from bot.config import Settings
from bot.reminding import Reminders, ReminderScheduler

if TYPE_CHECKING:
    from handlers.email.channel import EmailChannel
    from handlers.telegram.channel import TelegramChannel

logger = logging.getLogger(__name__)

REMINDERS_JOB = "reminders"  # the leader job of the reminder scheduler

NOTHING_CONFIGURED = """\
capbot serve: no channel is configured, so there is nothing to serve.
Configure at least one (environment variables, or a .env file in this directory):
  Telegram: CAPBOT_TELEGRAM_TOKEN=<token from @BotFather>
            (optional: CAPBOT_TELEGRAM_ADMINS=<user ids>, CAPBOT_TELEGRAM_WEBHOOK_URL=...)
  Email:    CAPBOT_IMAP_HOST, CAPBOT_IMAP_USER, CAPBOT_IMAP_PASSWORD,
            CAPBOT_SMTP_HOST, CAPBOT_EMAIL_FROM, CAPBOT_SECRET_KEY
To try the questionnaire without any channel: capbot chat
"""


class Channel(Protocol):
    name: str

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


def telegram_channel(app: App, **options: Any) -> TelegramChannel:
    """The Telegram channel, given what it uses of the app (options: concurrency,
    poll_timeout, start_attempts)."""
    from handlers.telegram.channel import TelegramChannel

    return TelegramChannel(
        service=app.service,
        settings=app.settings,
        translations=app.translations,
        questionnaires=app.questionnaires,
        database=app.database,
        leaders=app.leaders,
        **options,
    )


def email_channel(app: App) -> EmailChannel:
    """The email channel, given what it uses of the app."""
    from handlers.email.channel import EmailChannel

    return EmailChannel(
        service=app.service,
        settings=app.settings,
        translations=app.translations,
        engines=app.engines,
        default_questionnaire=app.questionnaire.id,
        detector=app.detector,
        database=app.database,
        leaders=app.leaders,
    )


def build_channels(app: App) -> list[Channel]:
    channels: list[Channel] = []
    settings = app.settings
    if settings.telegram_enabled:
        channels.append(telegram_channel(app))
    if settings.email_enabled:
        settings.check_email()
        from handlers.email.invitation_mail import invitation_sender
        from handlers.email.lead import lead_sender

        email = email_channel(app)
        # Reminders queued by `capbot remind` or the scheduler are form mails with a lead;
        # invitations (`capbot invite`) have their own headers; both go at CAPBOT_EMAIL_RATE.
        email.dispatcher.send = invitation_sender(
            email, lead_sender(email, email.dispatcher.send), rate=settings.email_rate
        )
        channels.append(email)
    return channels


def build_scheduler(app: App, channels: list[Channel]) -> ReminderScheduler:
    """The reminder loop, handing what it queues to the running channels' senders."""

    def publish(rows: list) -> None:
        for channel in channels:
            dispatcher = getattr(channel, "dispatcher", None)
            if dispatcher is not None:
                dispatcher.enqueue(rows)  # each dispatcher takes its own channel's rows

    reminders = Reminders(
        app.database,
        app.engines,
        app.questionnaire.id,
        app.translations,
        app.settings.reminder_policy,
        publish=publish,
    )
    return ReminderScheduler(reminders, every=app.settings.reminder_check_seconds)


async def serve(settings: Settings, *, stop_event: asyncio.Event | None = None) -> int:
    if not (settings.telegram_enabled or settings.email_enabled):
        print(NOTHING_CONFIGURED, file=sys.stderr, end="")
        return 2
    app = await build_app(settings)
    stop = stop_event or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # not the main thread
            loop.add_signal_handler(sig, stop.set)
    started: list[Channel] = []
    scheduler: ReminderScheduler | None = None
    try:
        for channel in build_channels(app):
            await channel.start()
            started.append(channel)
            logger.info("channel %s started", channel.name)
        if settings.reminders:
            scheduler = job = build_scheduler(app, started)
            # A singleton job: it runs only in the replica leading "reminders"
            # (bot/leaders.py; at once on SQLite). Were two to run, the conditional count
            # in storage/reminders_store.py would still remind nobody twice.
            await app.leaders.run(REMINDERS_JOB, lambda: job)
            logger.info(
                "reminders: on (every %.0f s, in the replica leading %r)",
                settings.reminder_check_seconds,
                REMINDERS_JOB,
            )
        await stop.wait()
        logger.info("stopping")
    finally:
        if scheduler is not None:
            await app.leaders.stop(REMINDERS_JOB)  # stops the scheduler where it ran
        for channel in reversed(started):
            try:
                await channel.stop()
            except Exception:
                logger.exception("channel %s did not stop cleanly", channel.name)
        await app.close()
    return 0
