"""`capbot invite` in this process against a real SMTP server (aiosmtpd): the done-when run
(20 contacts in the six languages, 2 bad rows -> 18 invitations), the invitation's content in
every language, dry run, re-run and --resend, contacts files in each encoding, refused files."""

from __future__ import annotations

import argparse
import email.policy
import re
from datetime import date
from email import message_from_bytes
from pathlib import Path

import pytest
from sqlalchemy import func, select

from bot.config import load_settings
from bot.i18n import long_date
from bot.invite_cli import run_invite
from bot.invite_tokens import verify_invite_token
from bot.messages import Inbound
from storage.models import invitations, outbox, respondents, rounds
from testkit.smtp import SmtpCapture

SECRET = "test-secret"
BOT = "capbot_test_bot"
DEADLINE = date(2031, 10, 1)
HEADER = "email,name,organization,country,language,org_type\n"
# Four people in each language with their country written in it; two bad rows among them.
PEOPLE = [
    ("ar", "مصر", "سلمى"), ("ar", "المغرب", "يوسف"), ("ar", "JOR", "ليلى"),
    ("en", "Kenya", "Grace Wanjiru"), ("en", "IND", "Priya Nair"), ("en", "Fiji", "Tomasi"),
    ("es", "México", "Ana Pérez"), ("es", "Perú", "Luis Quispe"), ("es", "CL", "Rosa"),
    ("fr", "Sénégal", "Amina Diallo"), ("fr", "Canada", "Marc Roy"), ("fr", "FRA", "Zoé"),
    ("ru", "Кыргызстан", "Айгуль"), ("ru", "Беларусь", "Иван"), ("ru", "KAZ", "Данияр"),
    ("zh", "中国", "李华"), ("zh", "蒙古", "巴特尔"), ("zh", "VNM", "阮"),
]


def contacts_csv(people=PEOPLE, *, bad: bool = True) -> str:
    lines = [HEADER]
    for i, (lang, country, name) in enumerate(people):
        lines.append(f"p{i}.{lang}@example.org,{name},Ministry {i},{country},{lang},government\n")
        if bad and i == 4:
            lines.append("not-an-address,Nobody,Org,Kenya,en,\n")  # line 7
        if bad and i == 9:
            lines.append("p3.en@example.org,Grace again,Org,Kenya,en,\n")  # line 13: duplicate
    return "".join(lines)


def settings(database_url: str, smtp: SmtpCapture, tmp_path: Path, **extra):
    values = dict(
        database_url=database_url, spool_path=tmp_path / "invite.spool", imap_host="127.0.0.1",
        imap_port=1, imap_user="bot", imap_password="pw", imap_security="plain",
        smtp_host="127.0.0.1", smtp_port=smtp.port, smtp_security="plain",
        email_from="bot@capbot.test", secret_key=SECRET, telegram_bot_username=BOT,
        email_rate=0)
    values.update(extra)
    return load_settings(**values)


def args(path: Path, **extra) -> argparse.Namespace:
    values = {"contacts": str(path), "questionnaire": None, "deadline": DEADLINE,
              "dry_run": False, "resend": False}
    values.update(extra)
    return argparse.Namespace(**values)


def write(tmp_path: Path, text: str, encoding: str = "utf-8", name: str = "contacts.csv"
          ) -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode(encoding))
    return path


def parsed(smtp: SmtpCapture):
    return [message_from_bytes(m.data, policy=email.policy.default) for m in smtp.messages]


def body(msg) -> str:
    return msg.get_body(("plain",)).get_content()


async def count(app, table) -> int:
    async with app.db.connect() as conn:
        return (await conn.execute(select(func.count()).select_from(table))).scalar_one()


async def test_twenty_contacts_two_bad_rows_eighteen_invitations(
        make_app, database_url, smtp_server: SmtpCapture, tmp_path, capsys) -> None:
    app = await make_app(database_url)
    path = write(tmp_path, contacts_csv())
    assert await run_invite(settings(database_url, smtp_server, tmp_path), args(path)) == 0
    out, err = capsys.readouterr()
    assert err.splitlines() == [
        f"{path}:7: invalid address 'not-an-address'; skipped",
        f"{path}:13: duplicate address p3.en@example.org (line 5); skipped"]
    assert "18 invitations queued" in out and "18 sent" in out and "2 bad rows" in out
    assert len(smtp_server.messages) == 18
    assert sorted(m.rcpt_tos[0] for m in smtp_server.messages) == sorted(
        f"p{i}.{lang}@example.org" for i, (lang, _, _) in enumerate(PEOPLE))
    async with app.db.connect() as conn:
        rows = (await conn.execute(select(invitations))).all()
        people = {r.email: r for r in (await conn.execute(select(respondents))).all()}
    assert {r.status for r in rows} == {"sent"} and {r.times_sent for r in rows} == {1}
    # Each person's draft is prepared in the invitation's language; no submission yet.
    for r in rows:
        person = people[r.email]
        assert person.state["phase"] == "new" and person.state["lang"] == r.language
        assert person.state["lang_explicit"] and person.submission_id is None
    assert people["p9.fr@example.org"].country == "sen"
    assert people["p12.ru@example.org"].country == "kgz"


@pytest.mark.parametrize("lang", ["ar", "en", "es", "fr", "ru", "zh"])
async def test_invitation_content(make_app, sqlite_url, smtp_server: SmtpCapture, tmp_path,
                                  lang: str) -> None:
    app = await make_app(sqlite_url)
    person = next(p for p in PEOPLE if p[0] == lang)
    path = write(tmp_path, HEADER + f"who@example.org,{person[2]},Ministry X,{person[1]},"
                                    f"{lang},\n")
    assert await run_invite(settings(sqlite_url, smtp_server, tmp_path), args(path)) == 0
    (msg,) = parsed(smtp_server)
    async with app.db.connect() as conn:
        inv = (await conn.execute(select(invitations))).one()
    token = re.search(r"\[ref:(i[a-z2-7]{26})\]", msg["Subject"]).group(1)
    assert verify_invite_token(SECRET.encode(), token) == inv.id
    when = long_date(DEADLINE, lang)
    text = body(msg)
    title = app.translations.raw(lang, "title", app.questionnaire.id)
    # (Header values have their whitespace collapsed: no CR/LF may reach the wire.)
    assert " ".join(when.split()) in msg["Subject"] and when in text
    assert person[2] in text and title in text
    assert f"https://t.me/{BOT}?start={token}" in text
    assert msg["Reply-To"] == f"bot+{token}@capbot.test"
    assert msg["List-Unsubscribe"] == f"<mailto:bot@capbot.test?subject=unsubscribe%20{token}>"
    assert msg["Auto-Submitted"] == "auto-generated"
    assert msg["Content-Language"] == lang
    assert msg["Message-ID"] == inv.message_id
    # The form is the email channel's: numbered questions, in the contact's language.
    first = app.translations.question_prompt(lang, app.questionnaire,
                                             app.questionnaire.questions["R1_name"]) \
        if "R1_name" in app.questionnaire.questions else None
    if first:
        assert first in text
    assert re.search(r"^1\. ", text, re.MULTILINE)
    # The first reply, by email, goes on in the invitation's language.
    result = await app.service.handle(Inbound("email", "who@example.org", "<r1@example.org>",
                                              "form", text="1. " + person[2]))
    assert result.replies and {r.language for r in result.replies} == {lang}


async def test_no_telegram_username_no_deep_link(make_app, sqlite_url, smtp_server, tmp_path
                                                  ) -> None:
    await make_app(sqlite_url)
    path = write(tmp_path, HEADER + "who@example.org,Ann,Org,Kenya,en,\n")
    s = settings(sqlite_url, smtp_server, tmp_path, telegram_bot_username=None)
    assert await run_invite(s, args(path)) == 0
    (msg,) = parsed(smtp_server)
    assert "t.me/" not in body(msg) and "Telegram" not in body(msg)


async def test_dry_run_writes_and_sends_nothing(make_app, database_url, smtp_server, tmp_path,
                                                capsys) -> None:
    app = await make_app(database_url)
    path = write(tmp_path, contacts_csv())
    s = settings(database_url, smtp_server, tmp_path)
    assert await run_invite(s, args(path, dry_run=True)) == 0
    out, _ = capsys.readouterr()
    assert out.count("would invite ") == 18
    assert "18 invitations would be sent" in out and "nothing was written or sent" in out
    for table in (rounds, invitations, respondents, outbox):
        assert await count(app, table) == 0
    assert smtp_server.messages == []


async def test_rerun_sends_nothing_and_resend_sends_again(make_app, database_url, smtp_server,
                                                          tmp_path, capsys) -> None:
    app = await make_app(database_url)
    path = write(tmp_path, contacts_csv(PEOPLE[:3], bad=False))
    s = settings(database_url, smtp_server, tmp_path)
    assert await run_invite(s, args(path)) == 0
    first = {m["To"]: m["Message-ID"] for m in parsed(smtp_server)}
    assert len(first) == 3
    capsys.readouterr()
    # Again without --deadline: the round under way; nothing new is sent.
    assert await run_invite(s, args(path, deadline=None)) == 0
    out, _ = capsys.readouterr()
    assert len(smtp_server.messages) == 3
    assert "3 contacts invited before, not sent again" in out
    # A dry run of --resend says what it would do; --resend does it, with new Message-IDs.
    assert await run_invite(s, args(path, resend=True, dry_run=True)) == 0
    assert capsys.readouterr()[0].count("would send again to ") == 3
    assert await run_invite(s, args(path, resend=True)) == 0
    again = {m["To"]: m["Message-ID"] for m in parsed(smtp_server)[3:]}
    assert again.keys() == first.keys() and not set(again.values()) & set(first.values())
    async with app.db.connect() as conn:
        rows = (await conn.execute(select(invitations))).all()
    assert {r.times_sent for r in rows} == {2} and len(rows) == 3
    assert {r.message_id for r in rows} == set(again.values())
    assert await count(app, rounds) == 1


@pytest.mark.parametrize("encoding,delimiter", [
    ("utf-8", ","), ("utf-8-sig", ","), ("utf-16", "\t"), ("utf-16-le", "\t"),
    ("cp1252", ";")], ids=["utf8", "utf8-bom", "utf16-excel", "utf16-no-bom", "cp1252"])
async def test_contacts_files_in_each_encoding(make_app, sqlite_url, smtp_server, tmp_path,
                                               encoding, delimiter) -> None:
    await make_app(sqlite_url)
    people = [("fr", "Sénégal", "Zoé Noël"), ("es", "Perú", "José Núñez"),
              ("en", "Côte d'Ivoire", "Aïcha")]
    if encoding != "cp1252":
        people.append(("ru", "Кыргызстан", "Айгуль"))
    text = contacts_csv(people, bad=False).replace(",", delimiter)
    path = write(tmp_path, text, encoding)
    assert await run_invite(settings(sqlite_url, smtp_server, tmp_path), args(path)) == 0
    sent = {m["To"]: m for m in parsed(smtp_server)}
    assert len(sent) == len(people)
    assert "Zoé Noël" in body(sent["p0.fr@example.org"])
    assert "José Núñez" in body(sent["p1.es@example.org"])


@pytest.mark.parametrize("content,line,problem", [
    (b"", 1, "empty"),
    (b"\xef\xbb\xbf\r\n", 1, "empty"),
    (b"name,organization,country,language\nAnn,Org,Kenya,en\n", 1, "email"),
])
async def test_refused_files_send_nothing(make_app, sqlite_url, smtp_server, tmp_path, capsys,
                                          content, line, problem) -> None:
    app = await make_app(sqlite_url)
    path = tmp_path / "contacts.csv"
    path.write_bytes(content)
    assert await run_invite(settings(sqlite_url, smtp_server, tmp_path), args(path)) == 2
    _, err = capsys.readouterr()
    (message,) = err.splitlines()  # one line: the file, the line, the problem
    assert message.startswith(f"capbot: {path}:{line}: ") and problem in message
    assert "nothing was sent" in message
    assert smtp_server.messages == [] and await count(app, invitations) == 0


async def test_an_address_the_server_refuses_is_undeliverable(
        make_app, sqlite_url, smtp_server_factory, tmp_path, capsys) -> None:
    app = await make_app(sqlite_url)
    smtp = await smtp_server_factory(reject_recipients=["gone@example.org"])
    path = write(tmp_path, HEADER + "gone@example.org,Ann,Org,Kenya,en,\n"
                                    "here@example.org,Bob,Org,Kenya,en,\n")
    assert await run_invite(settings(sqlite_url, smtp, tmp_path), args(path)) == 0
    assert "1 sent, 1 refused by the mail server" in capsys.readouterr()[0]
    async with app.db.connect() as conn:
        rows = {r.email: r for r in (await conn.execute(select(invitations))).all()}
    assert rows["gone@example.org"].status == "undeliverable"
    assert "550" in rows["gone@example.org"].undeliverable_reason
    assert rows["here@example.org"].status == "sent"


async def test_remind_right_after_invite_waits_the_interval(make_app, sqlite_url, smtp_server,
                                                            tmp_path, capsys) -> None:
    from bot.remind_cli import run_remind

    await make_app(sqlite_url)
    path = write(tmp_path, contacts_csv(PEOPLE[:3], bad=False))
    s = settings(sqlite_url, smtp_server, tmp_path, quiet_hours="0-0")
    assert await run_invite(s, args(path)) == 0
    capsys.readouterr()
    # Invited a moment ago: the first reminder waits CAPBOT_REMINDER_INTERVAL_DAYS.
    assert await run_remind(s, argparse.Namespace(dry_run=False)) == 0
    out = capsys.readouterr().out
    assert len(smtp_server.messages) == 3  # the invitations only
    assert "3 invited or reminded recently" in out, out
