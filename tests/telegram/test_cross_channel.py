"""One person across Telegram and email: deep links, /email, /stop, unsubscribe by mail.

Real parts: the PTB stack against the Bot API fake on loopback, Dovecot + the SMTP capture,
SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import csv
import functools
import io
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import insert, select
from sqlalchemy.engine import Connection

from bot.app import App
from bot.invite_tokens import make_invite_token
from bot.server import email_channel, telegram_channel
from handlers.telegram.channel import TelegramChannel
from reports.csvfiles import export_dir
from reports.options import ExportOptions
from reports.stats import collect_stats, format_stats
from storage.models import (
    addresses,
    answers,
    events,
    invitations,
    respondents,
    rounds,
    submissions,
)
from testkit.fake_bot_api import FakeBotApi, SimulatedUser
from testkit.imap import ImapSettings
from testkit.smtp import SmtpCapture
from tests.email.support import Env, Person, body_of
from tests.email.support import settings_for as email_settings
from tests.telegram.harness import press_code, settings_for

SECRET = b"test-secret"
AMINA = "amina@example.org"
NOW = datetime(2027, 9, 1, 9, 0, tzinfo=UTC)
REST = "2. amina@example.org\n3. Green Action\n4. 5\n7. No\n29. No\n30. 3\n39. Yes"


@dataclass
class Round:
    app: App
    telegram: TelegramChannel
    api: FakeBotApi
    mail: Env | None

    async def step(self, action) -> None:
        count = self.telegram.updates_handled + 1
        action()
        await asyncio.wait_for(self.telegram.wait_handled(count), 20)

    async def rows(self, table, *where) -> list:
        async with self.app.db.connect() as conn:
            return list(await conn.execute(select(table).where(*where)))

    def t(self, lang: str, key: str, **values) -> str:
        return self.app.translations.t(lang, key, **values)


def _invite(
    conn: Connection,
    *,
    email: str,
    language: str,
    name: str,
    organization: str,
    telegram: str | None,
) -> tuple[int, int]:
    """An invited person who has not started: a respondent with state {}, their addresses,
    an invitation (as `capbot invite` leaves them)."""
    round_id = conn.execute(
        insert(rounds)
        .values(questionnaire_id="cpb_cb_survey", deadline=None, created_at=NOW)
        .returning(rounds.c.id)
    ).scalar_one()
    rid = conn.execute(
        insert(respondents)
        .values(
            channel="email",
            channel_user_id=email,
            language=language,
            state={},
            email=email,
            name=name,
            organization=organization,
            unreachable=False,
            created_at=NOW,
            updated_at=NOW,
        )
        .returning(respondents.c.id)
    ).scalar_one()
    rows = [
        {
            "respondent_id": rid,
            "channel": "email",
            "channel_user_id": email,
            "unreachable": False,
            "created_at": NOW,
        }
    ]
    if telegram:
        rows.append({**rows[0], "channel": "telegram", "channel_user_id": telegram})
    conn.execute(insert(addresses), rows)
    iid = conn.execute(
        insert(invitations)
        .values(
            round_id=round_id,
            respondent_id=rid,
            email=email,
            language=language,
            status="sent",
            times_sent=1,
            reminders_sent=0,
            created_at=NOW,
        )
        .returning(invitations.c.id)
    ).scalar_one()
    return rid, iid


async def invite(
    r: Round,
    *,
    email: str = AMINA,
    language: str = "fr",
    name: str = "Amina Diallo",
    organization: str = "Ministère de l'Environnement",
    telegram: str | None = None,
) -> tuple[int, str]:
    rid, iid = await r.app.database.transaction(
        functools.partial(
            _invite,
            email=email,
            language=language,
            name=name,
            organization=organization,
            telegram=telegram,
        )
    )
    return rid, make_invite_token(SECRET, iid)


@pytest.fixture
async def telegram_only(make_app, database_url: str, api: FakeBotApi) -> AsyncIterator[Round]:
    app = await make_app(database_url, **settings_for(api, secret_key=SECRET.decode()))
    channel = telegram_channel(app, poll_timeout=5)
    await channel.start()
    try:
        yield Round(app, channel, api, None)
    finally:
        await channel.stop()


@pytest.fixture
async def both(
    make_app,
    database_url: str,
    api: FakeBotApi,
    imap_server: ImapSettings,
    smtp_server: SmtpCapture,
) -> AsyncIterator[Round]:
    app = await make_app(
        database_url, **settings_for(api), **email_settings(imap_server, smtp_server.port)
    )
    telegram = telegram_channel(app, poll_timeout=5)
    mail = email_channel(app)
    await telegram.start()
    await mail.start()
    try:
        yield Round(
            app,
            telegram,
            api,
            Env(app, mail, imap_server.server, smtp_server, imap_server.address),
        )
    finally:
        await mail.stop()
        await telegram.stop()


def texts(user: SimulatedUser) -> list[str]:
    return [m.text or "" for m in user.messages if m.data.get("from", {}).get("is_bot")]


async def test_a_deep_link_binds_the_chat_and_continues_in_the_invitations_language(
    telegram_only: Round,
) -> None:
    r = telegram_only
    rid, token = await invite(r)
    user = r.api.user(5001, "Amina", language_code="en")
    await r.step(lambda: user.send_command(f"/start {token}"))
    said = texts(user)
    assert said[0] == r.t(
        "fr", "link_welcome", name="Amina Diallo", organization="Ministère de l'Environnement"
    )
    assert r.t("fr", "welcome") in said[1]  # French, as invited, though the app is English
    qn = r.app.questionnaire
    assert r.app.translations.question_prompt("fr", qn, qn.questions["R1_name"]) in said[-1]
    (bound,) = await r.rows(addresses, addresses.c.channel == "telegram")
    assert (bound.channel_user_id, bound.respondent_id) == ("5001", rid)
    await r.step(lambda: user.send_text("Amina Diallo"))
    (answer,) = await r.rows(answers)
    (sub,) = await r.rows(submissions)
    assert (sub.respondent_id, sub.language, answer.channel) == (rid, "fr", "telegram")


async def test_a_deep_link_bound_to_another_account_is_refused_and_recorded(
    telegram_only: Round,
) -> None:
    r = telegram_only
    rid, token = await invite(r, language="es", telegram="7001")
    intruder = r.api.user(7002, "Other", language_code="es")
    await r.step(lambda: intruder.send_command(f"/start {token}"))
    assert texts(intruder)[0] == r.t("es", "link_refused")
    (event,) = await r.rows(events, events.c.type == "link_refused")
    assert event.respondent_id == rid and event.data["chat_id"] == "7002"
    owners = {a.channel_user_id: a.respondent_id for a in await r.rows(addresses)}
    assert owners["7001"] == rid and owners["7002"] != rid  # a respondent of its own
    stats = await collect_stats(r.app.database, r.app.questionnaire, r.app.translations)
    (refused,) = stats["cross_channel"]["links_refused"]
    assert (refused["email"], refused["chat"]) == (AMINA, "7002")
    assert "Invitation links refused" in format_stats(stats)


async def test_a_forged_link_is_not_valid_but_the_chat_may_answer(telegram_only: Round) -> None:
    r = telegram_only
    rid, _ = await invite(r)
    forged = make_invite_token(b"another key", 1)
    user = r.api.user(8001, "Eve", language_code="ru")
    await r.step(lambda: user.send_command(f"/start {forged}"))
    assert texts(user)[0] == r.t("ru", "link_invalid")
    (mine,) = await r.rows(addresses, addresses.c.channel_user_id == "8001")
    assert mine.respondent_id != rid


async def test_stop_opts_out_after_confirming_and_start_opts_back_in(telegram_only: Round) -> None:
    r = telegram_only
    rid, token = await invite(r, language="en")
    user = r.api.user(9001, "Amina", language_code="en")
    await r.step(lambda: user.send_command(f"/start {token}"))
    await r.step(lambda: user.send_command("/stop"))
    assert texts(user)[-1] == r.t("en", "stop_confirm")
    (person,) = await r.rows(respondents, respondents.c.id == rid)
    assert person.opted_out_at is None  # not before the confirmation
    await r.step(lambda: press_code(user, "YES"))
    assert texts(user)[-1] == r.t("en", "stopped")
    (person,) = await r.rows(respondents, respondents.c.id == rid)
    assert person.opted_out_at is not None
    await r.step(lambda: user.send_command("/start"))
    (person,) = await r.rows(respondents, respondents.c.id == rid)
    assert person.opted_out_at is None


async def test_started_on_telegram_email_then_finished_by_email(
    both: Round, tmp_path: Path
) -> None:
    r = both
    assert r.mail is not None
    rid, token = await invite(r, language="en", name="Amina Diallo", organization="Green Action")
    user = r.api.user(6001, "Amina", language_code="en")
    await r.step(lambda: user.send_command(f"/start {token}"))
    await r.step(lambda: user.send_text("Amina Diallo"))
    await r.step(lambda: user.send_command("/email"))
    assert texts(user)[-1] == r.t("en", "email_confirm", address=AMINA)
    await r.step(lambda: press_code(user, "YES"))
    form = await r.mail.reply()
    assert form["To"] == AMINA and "+" in form["Reply-To"]
    body = body_of(form)
    assert r.t("en", "mail_continued") in body
    qn, tr = r.app.questionnaire, r.app.translations
    prompt = functools.partial(tr.question_prompt, "en", qn)
    assert prompt(qn.questions["R1_name"]) not in body  # answered on Telegram: not asked
    assert prompt(qn.questions["R2_email"]) in body
    assert r.t("en", "email_sent", address=AMINA) in texts(user)[-2]
    person = Person(r.mail, AMINA, "Amina Diallo")
    person.last = form
    await person.answer(REST)
    receipt = await person.answer("SUBMIT", quote=False)
    assert "Reference number" in body_of(receipt)
    (sub,) = await r.rows(submissions)
    assert (sub.respondent_id, sub.status) == (rid, "submitted")
    channels = {a.question_id: a.channel for a in await r.rows(answers)}
    assert channels["R1_name"] == "telegram" and channels["R3_org"] == "email"
    out = tmp_path / "export"
    await export_dir(
        r.app.db, r.app.questionnaires, r.app.translations, ExportOptions.parse(), out
    )
    text = (out / "answers.csv").read_text("utf-8-sig")
    exported = {row["question_id"]: row["channel"] for row in csv.DictReader(io.StringIO(text))}
    assert exported["R1_name"] == "telegram" and exported["R3_org"] == "email"


async def test_started_by_email_continued_on_telegram_asks_only_what_is_left(both: Round) -> None:
    r = both
    assert r.mail is not None
    rid, token = await invite(r, language="en")
    person = Person(r.mail, AMINA, "Amina Diallo")
    domain = r.mail.bot.split("@")[1]
    await person.write(
        "1. Amina Diallo\n2. amina@example.org\n3. Green Action",
        subject="Re: Invitation",
        to=f"bot+{token}@{domain}",
    )
    (sub,) = await r.rows(submissions)
    assert sub.respondent_id == rid
    user = r.api.user(6101, "Amina", language_code="en")
    await r.step(lambda: user.send_command(f"/start {token}"))
    said = texts(user)
    assert said[0].startswith("Welcome, Amina Diallo")
    qn, tr = r.app.questionnaire, r.app.translations
    assert tr.question_prompt("en", qn, qn.questions["R4_orgtype"]) in said[-1]
    await r.step(lambda: press_code(user, "NGO"))
    channels = {a.question_id: a.channel for a in await r.rows(answers)}
    assert channels == {
        "R1_name": "email",
        "R2_email": "email",
        "R3_org": "email",
        "R4_orgtype": "telegram",
    }


async def test_unsubscribe_by_mail_in_any_language_and_by_list_unsubscribe(both: Round) -> None:
    r = both
    assert r.mail is not None
    rid, _ = await invite(r, language="fr")
    person = Person(r.mail, AMINA, "Amina Diallo")
    notice = await person.write("Désabonner")
    assert r.t("fr", "mail_unsubscribed") in body_of(notice)
    (row,) = await r.rows(respondents, respondents.c.id == rid)
    assert row.opted_out_at is not None
    other, token = await invite(r, email="li@example.cn", language="zh")
    # The List-Unsubscribe mailto, sent by a mail client from another address
    helper = Person(r.mail, "assistant@example.cn", "Assistant")
    await helper.write("", subject=f"unsubscribe {token}")
    (row,) = await r.rows(respondents, respondents.c.id == other)
    assert row.opted_out_at is not None
    assert await r.rows(submissions) == []  # opting out starts no report
