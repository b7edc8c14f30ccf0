"""Send-only channels for one-shot commands (`capbot remind`): each configured channel's
outbox dispatcher and sender, without taking in updates or mail.

`capbot serve` may be running at the same time: both send from the same outbox, and the
committed lease on each row (bot/outbox.py) keeps a message from going out twice.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from bot.outbox import OutboxDispatcher, OutboxItem

if TYPE_CHECKING:
    from bot.app import App

logger = logging.getLogger(__name__)


class Courier:
    """`async with Courier(app) as courier: courier.enqueue(rows); await courier.wait_idle()`."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.dispatchers: dict[str, OutboxDispatcher] = {}
        self.sent = 0  # messages handed to a channel without error (progress)
        self.invitations = None  # the email channel's InvitationBook, when email is on
        self._closers: list = []

    @property
    def channels(self) -> list[str]:
        return list(self.dispatchers)

    async def __aenter__(self) -> Courier:
        settings = self.app.settings
        try:
            if settings.telegram_enabled:
                await self._telegram()
            if settings.email_enabled:
                await self._email()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def _telegram(self) -> None:
        from bot.server import telegram_channel

        channel = telegram_channel(self.app)
        await channel.application.initialize()  # getMe; the rate limiter starts with the bot

        async def close() -> None:
            await channel.dispatcher.stop()
            await channel.application.shutdown()

        self._closers.append(close)
        self._counting(channel.dispatcher)
        await channel.dispatcher.start()
        self.dispatchers["telegram"] = channel.dispatcher

    async def _email(self) -> None:
        from bot.server import email_channel
        from handlers.email.invitation_mail import invitation_sender
        from handlers.email.lead import lead_sender

        channel = email_channel(self.app)
        channel.dispatcher.send = invitation_sender(
            channel,
            lead_sender(channel, channel.dispatcher.send),
            rate=self.app.settings.email_rate,
        )
        self.invitations = channel.invitations  # invitations sent, counted on their rows

        async def close() -> None:
            await channel.dispatcher.stop()
            await channel.invitations.close()
            await channel.sender.close()

        self._closers.append(close)
        self._counting(channel.dispatcher)
        await channel.dispatcher.start()
        self.dispatchers["email"] = channel.dispatcher

    def _counting(self, dispatcher: OutboxDispatcher) -> None:
        send = dispatcher.send

        async def counted(item: OutboxItem) -> None:
            await send(item)
            self.sent += 1

        dispatcher.send = counted

    def enqueue(self, rows: list[OutboxItem]) -> None:
        for dispatcher in self.dispatchers.values():
            dispatcher.enqueue(rows)  # each takes its own channel's rows

    async def wait_idle(self) -> None:
        for dispatcher in self.dispatchers.values():
            await dispatcher.wait_idle()

    async def close(self) -> None:
        while self._closers:
            close = self._closers.pop()
            try:
                await close()
            except Exception:
                logger.exception("a sender did not stop cleanly")
