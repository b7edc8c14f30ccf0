"""Fixtures of the Telegram tests: the Bot API fake on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from testkit.fake_bot_api import FakeBotApi


@pytest.fixture
async def api() -> AsyncIterator[FakeBotApi]:
    async with FakeBotApi() as fake:
        yield fake
