"""An SMTP outage is logged once at WARNING, and its end again at WARNING (issue 8).

A real aiosmtpd server is stopped and started again on the same port; before, the outage
showed only as the dispatcher's INFO line per retry.
"""

from __future__ import annotations

import logging

import pytest

from bot.outbox import TransientSendError
from handlers.email.smtp import SmtpConfig, SmtpSender
from testkit.smtp import SmtpCapture

LOGGER = "handlers.email.smtp"


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == LOGGER and r.levelno >= logging.WARNING]


async def test_an_outage_warns_once_and_says_when_mail_flows_again(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    server = SmtpCapture()
    await server.start()
    port = server.port
    sender = SmtpSender(SmtpConfig(host="127.0.0.1", port=port, security="plain"))
    mail = b"Subject: x\r\n\r\nx\r\n"
    try:
        await sender.send("bot@example.org", ["a@example.net"], mail)
        assert warnings(caplog) == []
        await server.stop()  # down: the pooled connection is dropped, new ones are refused
        for _ in range(4):
            with pytest.raises(TransientSendError):
                await sender.send("bot@example.org", ["a@example.net"], mail)
        (down,) = warnings(caplog)
        assert f"127.0.0.1:{port} is not taking mail" in down
        server = SmtpCapture(port=port)
        await server.start()  # up again
        for _ in range(2):
            await sender.send("bot@example.org", ["a@example.net"], mail)
        assert len(await server.wait_for(2)) == 2
        first, up = warnings(caplog)  # nothing more while it was down
        assert first == down
        assert f"127.0.0.1:{port} takes mail again" in up and "4 attempts failed" in up
    finally:
        await sender.close()
        await server.stop()


async def test_a_refused_recipient_is_no_outage(smtp_server_factory,
                                                caplog: pytest.LogCaptureFixture) -> None:
    server = await smtp_server_factory(reject_recipients=["gone@example.net"])
    sender = SmtpSender(SmtpConfig(host="127.0.0.1", port=server.port, security="plain"))
    try:
        with pytest.raises(Exception, match="550"):
            await sender.send("bot@example.org", ["gone@example.net"], b"Subject: x\r\n\r\nx")
        assert warnings(caplog) == [] and sender.down_since is None
    finally:
        await sender.close()
