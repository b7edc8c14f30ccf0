"""The `env` fixture: the real app and its email channel on Dovecot and an SMTP capture."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from bot.server import email_channel
from testkit.imap import ImapSettings
from testkit.smtp import SmtpCapture
from tests.email.support import Env, settings_for


@pytest.fixture
async def env(
    imap_server: ImapSettings,
    smtp_server: SmtpCapture,
    make_app,
    sqlite_url: str,
    request: pytest.FixtureRequest,
) -> AsyncIterator[Env]:
    extra = getattr(request, "param", {})
    app = await make_app(sqlite_url, **settings_for(imap_server, smtp_server.port, **extra))
    channel = email_channel(app)
    await channel.start()
    try:
        yield Env(app, channel, imap_server.server, smtp_server, imap_server.address)
    finally:
        await channel.stop()
