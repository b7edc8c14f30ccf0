"""Helpers for end-to-end Telegram tests: capbot's channel running against FakeBotApi."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from bot.app import App
from bot.server import telegram_channel
from handlers.telegram.channel import TelegramChannel
from testkit.fake_bot_api import ChatMessage, FakeBotApi, SimulatedUser

ADMIN = 424242


@dataclass
class Running:
    app: App
    channel: TelegramChannel
    api: FakeBotApi

    async def step(self, action: Callable[[], Any]) -> None:
        """One user action, then wait until the bot handled it and sent every reply."""
        count = self.channel.updates_handled + 1
        action()
        await asyncio.wait_for(self.channel.wait_handled(count), 20)

    async def rows(self, table) -> list[Any]:
        async with self.app.db.connect() as conn:
            return list(await conn.execute(select(table)))


def settings_for(api: FakeBotApi, **extra: Any) -> dict[str, Any]:
    return {"telegram_token": api.token, "telegram_api_url": api.base_url,
            "telegram_rate_limit": False, "telegram_chat_rate": 0,
            "telegram_inbound_limit": 0, "telegram_admins": str(ADMIN), **extra}


@asynccontextmanager
async def running(make_app, database_url: str, api: FakeBotApi,
                  **extra: Any) -> AsyncIterator[Running]:
    app = await make_app(database_url, **settings_for(api, **extra))
    channel = telegram_channel(app, poll_timeout=5)
    await channel.start()
    try:
        yield Running(app, channel, api)
    finally:
        await channel.stop()


def press_code(user: SimulatedUser, code: str) -> str:
    """Press the button for option `code` on the latest message that offers it."""
    for message in reversed(user.messages):
        for button in message.buttons:
            if button.get("callback_data", "").endswith(f"|{code}"):
                return user.press(button["callback_data"], message)
    raise LookupError(f"no button for {code} in chat {user.id}")


def act(user: SimulatedUser, kind: str, value: str) -> Callable[[], Any]:
    if kind == "choice":
        return lambda: press_code(user, value)
    if value.startswith("/"):
        return lambda: user.send_command(value)
    return lambda: user.send_text(value)


def is_question(message: ChatMessage) -> bool:
    entities = message.data.get("entities") or []
    return bool(entities) and entities[0]["type"] == "italic" and entities[0]["offset"] == 0
