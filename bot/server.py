"""`capbot serve`: run every configured channel in one event loop until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from typing import Protocol

from bot.app import App, build_app
from bot.config import Settings

logger = logging.getLogger(__name__)

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


def build_channels(app: App) -> list[Channel]:
    channels: list[Channel] = []
    settings = app.settings
    if settings.telegram_enabled:
        from handlers.telegram.channel import TelegramChannel

        channels.append(TelegramChannel(app))
    if settings.email_enabled:
        settings.check_email()
        from handlers.email.channel import EmailChannel

        channels.append(EmailChannel(app))
    return channels


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
    try:
        for channel in build_channels(app):
            await channel.start()
            started.append(channel)
            logger.info("channel %s started", channel.name)
        await stop.wait()
        logger.info("stopping")
    finally:
        for channel in reversed(started):
            try:
                await channel.stop()
            except Exception:
                logger.exception("channel %s did not stop cleanly", channel.name)
        await app.close()
    return 0
