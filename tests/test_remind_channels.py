"""`capbot remind` end to end: Telegram reminders through real python-telegram-bot on the Bot
API fake, email reminders captured by a real SMTP server (aiosmtpd); a person who blocked the
bot is reminded by email instead."""

from __future__ import annotations

import argparse
import email.policy
import re
from datetime import UTC, date, datetime, timedelta
from email import message_from_bytes

import pytest

from bot.config import load_settings
from bot.remind_cli import run_remind
from handlers.email.tokens import find_token, verify_token
from testkit.fake_bot_api import FakeBotApi
from testkit.round_seed import Person, seed_round
from testkit.smtp import SmtpCapture
from tests.test_reminders import progressed

SECRET = "test-secret"


def remind_settings(database_url: str, api: FakeBotApi, smtp: SmtpCapture, tmp_path, **extra):
    return load_settings(
        database_url=database_url, spool_path=tmp_path / "remind.spool",
        telegram_token=api.token, telegram_api_url=api.base_url, telegram_rate_limit=False,
        telegram_chat_rate=0, imap_host="127.0.0.1", imap_port=1, imap_user="bot",
        imap_password="pw", imap_security="plain", smtp_host="127.0.0.1", smtp_port=smtp.port,
        smtp_security="plain", email_from="bot@capbot.test", secret_key=SECRET,
        quiet_hours="0-0", **extra)


def body(message) -> str:
    part = message.get_body(("plain",))
    return part.get_content() if part is not None else ""


async def test_blocked_on_telegram_reminded_by_email_and_the_others_on_their_channel(
        make_app, database_url, engine, smtp_server: SmtpCapture, tmp_path) -> None:
    deadline = date(datetime.now(UTC).year + 1, 10, 1)
    app = await make_app(database_url)
    started = progressed(engine, "fr", answers=2)
    await seed_round(app.database, [
        Person("blocked@example.org", "fr", "FRA", state={**started, "ref": "CB-BLOCKED"},
               last_channel="telegram", telegram="5002", submission="draft"),
        Person("chat@example.org", "ru", "RUS", state=progressed(engine, "ru", answers=3),
               last_channel="telegram", telegram="5001", submission="draft"),
        Person("new@example.org", "es", "KEN", message_id="<inv-1@capbot.test>"),
    ], deadline=deadline, invited_at=datetime.now(UTC) - timedelta(days=30))
    async with FakeBotApi() as api:
        chat = api.user(5001, language_code="ru")
        api.user(5002, language_code="fr")
        api.block_user(5002)
        settings = remind_settings(database_url, api, smtp_server, tmp_path)
        assert await run_remind(settings, argparse.Namespace(dry_run=False)) == 0

        # Telegram: one message, the reminder with the question they stopped at.
        [sent] = chat.messages
        assert re.search(r"Осталось \d+ вопрос", sent.text)
        assert "PARTY_GOV" in " ".join(b.get("callback_data", "") for b in sent.buttons)
        answered = {r.params["chat_id"]: r.status for r in api.requests
                    if r.method == "sendMessage"}
        assert answered == {5001: 200, 5002: 403}

        # Email: the person who blocked the bot, and the one invited who never answered.
        by_to = {m.rcpt_tos[0]: message_from_bytes(m.data, policy=email.policy.default)
                 for m in smtp_server.messages}
        assert set(by_to) == {"blocked@example.org", "new@example.org"}
        fr = by_to["blocked@example.org"]
        assert fr["Subject"].startswith("Rappel")
        text = body(fr)
        left = re.search(r"Il reste (\d+) questions", text)
        assert left and int(left.group(1)) > 3
        assert "CB-BLOCKED" in text  # the draft's form, with its reference
        token = find_token(fr["Reply-To"]) or find_token(fr["Subject"])
        claims = verify_token(SECRET.encode(), token, int(datetime.now(UTC).timestamp()))
        assert claims is not None and claims.ref == "CB-BLOCKED"  # a reply continues it
        assert claims.matches_address("blocked@example.org")
        es = by_to["new@example.org"]
        assert "Recordatorio" in es["Subject"]
        assert es["In-Reply-To"] == "<inv-1@capbot.test>"  # in the invitation's thread
        assert "Referencia de su informe" not in body(es)  # no report yet
        assert "Quedan" in body(es)

        # Again: nobody is reminded twice, the refused one is not sent again.
        before = len(smtp_server.messages), len(api.calls("sendMessage"))
        assert await run_remind(settings, argparse.Namespace(dry_run=False)) == 0
        assert (len(smtp_server.messages), len(api.calls("sendMessage"))) == before


async def test_dry_run_lists_and_sends_nothing(make_app, sqlite_url, smtp_server, tmp_path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    app = await make_app(sqlite_url)
    await seed_round(app.database, [Person("new@example.org", "zh", "CHN"),
                                    Person("stop@example.org", "en", "KEN", opted_out=True)],
                     deadline=date(datetime.now(UTC).year + 1, 10, 1),
                     invited_at=datetime.now(UTC) - timedelta(days=30))
    async with FakeBotApi() as api:
        settings = remind_settings(sqlite_url, api, smtp_server, tmp_path)
        assert await run_remind(settings, argparse.Namespace(dry_run=True)) == 0
    out = capsys.readouterr().out
    assert "would remind new@example.org on email in zh" in out
    assert "1 reminders would be sent" in out and "1 opted out" in out
    assert smtp_server.messages == [] and api.calls("sendMessage") == []
