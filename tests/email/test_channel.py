"""The email channel end to end: Dovecot in, SMTP capture out, the real app and database.

Respondents' mail is delivered over LMTP (as a mail server would: Return-Path and
Delivered-To added, plus-addresses kept); the bot's replies are read from the SMTP capture.
Waits are bounded (each mail normally takes well under a second), never timed assertions.
"""

from __future__ import annotations

import asyncio
import csv
import os
import signal
import subprocess
import sys
import time
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path

import pytest

from bot.server import email_channel
from handlers.email.channel import decode_raw
from handlers.email.smtp import SmtpConfig, SmtpSender
from handlers.email.tokens import find_token, make_token
from storage.models import answers, events, inbound_messages, outbox, submissions
from testkit.imap import ImapSettings
from testkit.ports import free_port
from testkit.smtp import SmtpCapture
from tests.email.support import (
    FIXTURES,
    ROOT,
    WAIT,
    Env,
    Person,
    body_of,
    message_id,
    settings_for,
)

# -- the whole questionnaire in three languages ----------------------------------------------

JOURNEYS = {
    "es": {
        "hello": "Buenos días, quisiera responder al cuestionario sobre creación de capacidad "
        "en seguridad de la biotecnología de mi ministerio.",
        "first": "Hola:\n\nLe envío mis primeras respuestas.\n\n1. María Lópes\n3. Ministerio "
        "del Ambiente\n4. 1\n6. Ecuador\n7. Sí\n\nSaludos cordiales,\nMaría",
        "second": "2. maria.lopez@ambiente.example.ec\n1. María López\n8. Taller nacional de "
        "evaluación del riesgo\n9. 2\n10. 1, 3\n11. Nacional\n12. ec\n13. 4\n"
        "14. 2023-05\n15. mañana",
        "third": "15. 2023-11\n16. 3, 4\n18. 1\n22. 45\n25. 15000 USD\n28. No\n29. Sí\n30. 1\n"
        "31. 3, 4\n39. Sí",
        "name": "María López",
        "org": "Ministerio del Ambiente",
        "country": "ec",
    },
    "zh": {
        "hello": "您好，我想填写关于生物安全能力建设的调查问卷，谢谢。",
        "first": "您好：\n\n以下是我的部分答复。\n\n1、王芳芳\n3、生态环境部\n4、1\n6、中国\n"
        "7、是\n\n此致",
        "second": "2. wang.fang@mee.example.cn\n1. 王芳\n8. 全国生物安全风险评估培训班\n"
        "9. 2\n10. 1、3\n11. 3\n12. cn\n13. 4\n14. 2023-05\n15. 明天",
        "third": "15. 2023年11月\n16. 3、4\n18. 1\n22. 45\n25. 15000 USD\n28. 否\n29. 是\n"
        "30. 1\n31. 3、4\n39. 是",
        "name": "王芳",
        "org": "生态环境部",
        "country": "cn",
    },
    "ar": {
        "hello": "مرحباً، أود الإجابة عن استبيان بناء القدرات في مجال السلامة الأحيائية.",
        "first": "مرحباً،\n\nإليكم إجاباتي الأولى:\n\n١. أحمد عليي\n٣. وزارة البيئة\n٤. ١\n"
        "٦. مصر\n٧. نعم\n\nمع أطيب التحيات،\nأحمد",
        "second": "2. ahmed.ali@eeaa.example.eg\n1. أحمد علي\n8. ورشة عمل وطنية لتقييم المخاطر\n"
        "9. 2\n10. 1، 3\n11. 3\n12. eg\n13. 4\n14. 2023-05\n15. غدا",
        "third": "15. 2023-11\n16. 3، 4\n18. 1\n22. ٤٥\n25. 15000 USD\n28. لا\n29. نعم\n30. 1\n"
        "31. 3، 4\n39. نعم",
        "name": "أحمد علي",
        "org": "وزارة البيئة",
        "country": "eg",
    },
}


@pytest.mark.parametrize("lang", list(JOURNEYS))
async def test_the_whole_questionnaire_by_mail(env: Env, lang: str) -> None:
    j = JOURNEYS[lang]
    tr = env.app.translations
    qn = env.app.questionnaire
    person = Person(env, f"respondent.{lang}@example.net", "Respondent")

    # First mail, no reference: the form, in the language of the text.
    form = await person.write(j["hello"])
    text = body_of(form)
    assert form["Content-Language"] == lang
    assert tr.raw(lang, "title", qn.id) in form["Subject"]
    assert tr.t(lang, "mail_how_title") in text
    assert "(1) " in text and tr.raw(lang, "submit_word") in text
    assert form.get_body(("html",)) is not None
    assert form["Auto-Submitted"] == "auto-replied" and form["X-Capbot"] == "1"
    token = find_token(form["Reply-To"])
    assert token and f"[ref:{token}]" in form["Subject"]
    assert form["In-Reply-To"] == message_id(person.sent[0])

    # A partial reply, answers in any order, the form quoted below.
    digest = await person.answer(j["first"])
    text = body_of(digest)
    assert tr.tn(lang, "mail_recorded", 5) in text
    assert any(tr.tn(lang, "mail_missing", k) in text for k in range(1, 60))
    assert digest["In-Reply-To"] == message_id(person.sent[1])
    assert digest["Subject"].startswith("Re: ")

    # A correction and an invalid answer.
    digest = await person.answer(j["second"])
    text = body_of(digest)
    assert tr.raw(lang, "mail_changed").split("{value}")[0].strip() in text  # "previously"
    assert tr.t(lang, "error_year_month") in text
    assert tr.tn(lang, "mail_rejected", 1) in text

    # The rest: complete, so the bot asks for the confirmation word.
    review = await person.answer(j["third"])
    text = body_of(review)
    submit_word = tr.raw(lang, "submit_word")
    assert tr.t(lang, "mail_complete", word=submit_word) in text

    receipt = await person.answer(submit_word, quote=False)
    text = body_of(receipt)
    (sub,) = await env.rows(submissions)
    assert sub.status == "submitted" and sub.language == lang and sub.channel == "email"
    assert sub.reference in text
    assert tr.t(lang, "submitted", ref=sub.reference, version=1) in text
    stored = {
        (r.question_id, r.repeat_index): r.value
        for r in await env.rows(answers, answers.c.submission_id == sub.id)
    }
    assert stored[("R1_name", 0)] == j["name"]
    assert stored[("R3_org", 0)] == j["org"]
    assert stored[("R5_country", 0)] == j["country"]
    assert stored[("A3_role", 0)] == ["IMPLEMENTING", "COLLABORATING"]
    assert stored[("A8_end", 0)] == "2023-11"
    assert stored[("A12_trained", 0)] == 45
    assert stored[("N3_need_areas", 0)] == ["RISK_ASSESSMENT", "RISK_MANAGEMENT"]
    # Every mail recorded with its raw bytes; the mailbox emptied into Processed.
    inbound = await env.rows(inbound_messages)
    assert len(inbound) == 5 and {r.status for r in inbound} == {"processed"}
    await env.settle()
    filed = env.dovecot.fetch_all(None, "Processed")
    assert len(filed) == 5
    assert sorted(decode_raw(r.payload) for r in inbound) == sorted(filed)
    assert all("\\Seen" in f for f in env.dovecot.flags(None, "Processed").values())


# -- loop safety, duplicates -------------------------------------------------------------------


async def test_auto_replies_bounces_and_lists_are_recorded_never_answered(env: Env) -> None:
    for name in (
        "ooo_exchange_en.eml",
        "ooo_gmail_vacation_fr.eml",
        "bounce_dsn.eml",
        "mailing_list.eml",
        "own_mail.eml",
    ):
        await env.deliver((FIXTURES / name).read_bytes())
    await env.deliver((FIXTURES / "bounce_postmaster_plain.eml").read_bytes(), mail_from="")
    # A real person afterwards: once answered, everything before was handled.
    person = Person(env, "someone@example.net", "Someone")
    await person.write("Hello, I would like to answer the capacity-building questionnaire.")
    await env.settle()
    assert len(env.smtp.messages) == 1
    rows = {r.channel_message_id: r for r in await env.rows(inbound_messages)}
    ignored = [r for r in rows.values() if r.status == "ignored"]
    assert len(ignored) == 6
    assert {r.reason.split(":")[0] for r in ignored} == {
        "auto_reply",
        "bounce",
        "list",
        "own_mail",
    }
    assert await env.rows(outbox, outbox.c.address != "someone@example.net") == []
    assert env.dovecot.list_uids(None) == []


async def test_mail_from_our_own_address_is_never_answered(env: Env) -> None:
    me = Person(env, env.bot, "Bot")
    await env.deliver(me.compose("1. loop?"))
    other = Person(env, "other@example.net", "Other")
    await other.write("Hello, please send me the questionnaire for my organization.")
    await env.settle()
    assert [m.message["To"] for m in env.smtp.messages] == ["other@example.net"]


async def test_the_same_message_delivered_twice_is_processed_once(env: Env) -> None:
    person = Person(env, "twice@example.net", "Twice")
    raw = person.compose("Hello, I would like to answer the questionnaire please.")
    await env.deliver(raw)
    await env.deliver(raw)
    await env.reply()
    await env.settle()
    assert len(env.smtp.messages) == 1
    assert len(await env.rows(inbound_messages)) == 1
    assert len(env.dovecot.list_uids(None, "Processed")) == 2  # both copies filed away


@pytest.mark.parametrize("env", [{"email_max_bytes": 20_000}], indirect=True)
async def test_a_message_over_the_size_limit_gets_one_short_reply(env: Env) -> None:
    person = Person(env, "big@example.net", "Big")
    reply = await person.write("1. Amina\n" + "x" * 50_000)
    assert "too large" in body_of(reply) and "0.1 MB" not in body_of(reply)
    (row,) = await env.rows(inbound_messages)
    assert row.status == "rejected" and row.reason.startswith("too large")
    assert len(row.payload) < 2_000  # headers only
    assert await env.rows(answers) == []


@pytest.mark.parametrize("env", [{"email_daily_reply_cap": 2}], indirect=True)
async def test_replies_per_address_are_capped_per_day(env: Env) -> None:
    person = Person(env, "chatty@example.net", "Chatty")
    await person.write("Hello, I would like to answer the capacity-building questionnaire.")
    await person.answer("1. Chatty")
    assert person.last is not None
    reply_to = person.last["Reply-To"]  # the third reply (with its token) gets no answer
    await env.deliver(
        person.compose("2. chatty@example.net", to=reply_to), to=reply_to, mail_from=person.address
    )
    other = Person(env, "other@example.net", "Other")
    await other.write("Hello, I would like to answer the capacity-building questionnaire.")
    await env.settle()
    assert [m.message["To"] for m in env.smtp.messages].count("chatty@example.net") == 2
    stored = {r.question_id for r in await env.rows(answers)}
    assert {"R1_name", "R2_email"} <= stored  # the third mail still counted


@pytest.mark.parametrize("env", [{"email_daily_reply_cap": 2}], indirect=True)
async def test_replies_another_process_sent_today_count_against_the_cap(env: Env) -> None:
    """A second replica (or this one before a restart) already answered twice today: the
    cap is counted in the database, not in this process's memory."""
    await env.app.service.store.add_outbox(
        [
            {
                "channel": "email",
                "address": "busy@example.net",
                "payload": {"text": "an earlier reply", "kind": "info"},
            }
            for _ in range(2)
        ]
    )
    person = Person(env, "busy@example.net", "Busy")
    await env.deliver(
        person.compose("Hello, I would like to answer the questionnaire."),
        mail_from=person.address,
    )
    await env.settle()
    assert "busy@example.net" not in [m.message["To"] for m in env.smtp.messages]
    (row,) = await env.rows(inbound_messages)
    assert row.status == "processed"  # kept and applied, only not answered


# -- identity: tokens and delegates ------------------------------------------------------------


async def test_a_colleague_replying_to_the_form_answers_for_the_owner(env: Env) -> None:
    owner = Person(env, "maria.lopez@ambiente.example.es", "María López", "es")
    form = await owner.write(
        "Buenos días, quisiera responder al cuestionario de creación de capacidad."
    )
    # Pedro got the form forwarded and replies to it (the token comes with the address).
    pedro = Person(env, "pedro.gomez@ambiente.example.es", "Pedro Gómez", "es", last=form)
    raw = pedro.compose(
        "Respondo en nombre de María.\n\n3. Ministerio del Ambiente\n4. 1",
        subject="RE: " + form["Subject"],
        to=form["Reply-To"],
    )
    await env.deliver(raw, to=form["Reply-To"], mail_from=pedro.address)
    to_maria, to_pedro = sorted(await env.replies(2), key=lambda m: m["To"])
    assert to_pedro["To"] == pedro.address and to_maria["To"] == owner.address
    assert "en nombre de la persona" in body_of(to_pedro)
    assert f"{pedro.address} ha respondido en su nombre" in body_of(to_maria)
    (sub,) = await env.rows(submissions)  # one report: María's
    stored = {r.question_id: r.value for r in await env.rows(answers)}
    assert stored == {"R3_org": "Ministerio del Ambiente", "R4_orgtype": "PARTY_GOV"}
    (delegate,) = await env.rows(events, events.c.type == "delegate")
    assert delegate.data["address"] == pedro.address and delegate.submission_id == sub.id
    # Pedro's next reply keeps going to María's report.
    pedro.last = to_pedro
    await pedro.answer("6. es")
    await env.replies(1)  # the owner's notice
    assert len(await env.rows(submissions)) == 1


@pytest.mark.parametrize("kind", ["forged", "expired"])
async def test_a_forged_or_expired_token_is_refused_politely(env: Env, kind: str) -> None:
    person = Person(env, "mallory@example.net", "Mallory")
    if kind == "forged":
        token = "hdiew4rblv6e5nrateh742b42q2htsvay6yiq"  # signed with another key
    else:
        token = make_token(
            b"test-secret", "CB-ABCDEFG", person.address, int(time.time()) - 100 * 86_400
        )
    reply = await person.write(
        "1. Mallory\n3. Evil Corp",
        subject=f"Re: Questionnaire [ref:{token}]",
        to=f"bot+{token}@{env.bot.split('@')[1]}",
    )
    assert "not valid or has expired" in body_of(reply)
    (row,) = await env.rows(inbound_messages)
    assert row.status == "rejected" and "token" in row.reason
    assert await env.rows(answers) == []


async def test_on_postgresql(
    imap_server: ImapSettings, smtp_server: SmtpCapture, make_app, postgres_url: str
) -> None:
    app = await make_app(postgres_url, **settings_for(imap_server, smtp_server.port))
    channel = email_channel(app)
    await channel.start()
    try:
        env = Env(app, channel, imap_server.server, smtp_server, imap_server.address)
        await env.deliver((FIXTURES / "ooo_exchange_en.eml").read_bytes())
        person = Person(env, "pg@example.net", "PG")
        await person.write("Hello, I would like to answer the capacity-building questionnaire.")
        await person.answer(
            "1. Amina Diallo\n2. amina@example.org\n3. Green Action\n4. 5\n"
            "7. No\n29. No\n30. 3\n39. Yes"
        )
        receipt = await person.answer("SUBMIT", quote=False)
        assert "Reference number" in body_of(receipt)
        (sub,) = await env.rows(submissions)
        assert sub.status == "submitted"
        assert {r.status for r in await env.rows(inbound_messages)} == {"processed", "ignored"}
        await env.settle()
        assert len(env.smtp.messages) == 3
    finally:
        await channel.stop()


# -- the connection: IDLE, polling, a killed connection, TLS ----------------------------------


async def test_a_connection_killed_mid_idle_reconnects(env: Env) -> None:
    person = Person(env, "first@example.net", "First")
    await person.write("Hello, I would like to answer the capacity-building questionnaire.")
    watcher = env.channel.watcher
    assert watcher.sessions == 1
    env.dovecot.doveadm("kick", env.dovecot.bot_user)  # kills the imap process serving us
    deadline = time.monotonic() + WAIT
    while watcher.sessions < 2 or not watcher.connected.is_set():
        assert time.monotonic() < deadline, "no reconnection"
        await asyncio.sleep(0.05)
    second = Person(env, "second@example.net", "Second")
    reply = await second.write("Hello, please send me the capacity-building questionnaire.")
    assert reply["To"] == "second@example.net"


@pytest.mark.parametrize(
    "env", [{"imap_use_idle": False, "imap_poll_seconds": 0.3}], indirect=True
)
async def test_polling_when_idle_is_not_used(env: Env) -> None:
    assert not env.channel.watcher.idle_supported
    person = Person(env, "poller@example.net", "Poller")
    reply = await person.write(
        "Hello, I would like to answer the capacity-building questionnaire."
    )
    assert reply["To"] == person.address


async def test_imaps_and_a_processed_folder_with_a_unicode_name(
    imap_server: ImapSettings, smtp_server: SmtpCapture, make_app, sqlite_url: str
) -> None:
    app = await make_app(
        sqlite_url,
        **settings_for(
            imap_server,
            smtp_server.port,
            imap_security="ssl",
            imap_port=imap_server.ssl_port,
            imap_cafile=imap_server.cafile,
            imap_processed_folder="Courrier traité",
        ),
    )
    channel = email_channel(app)
    await channel.start()
    try:
        env = Env(app, channel, imap_server.server, smtp_server, imap_server.address)
        person = Person(env, "tls@example.net", "TLS")
        await person.write("Hello, I would like to answer the capacity-building questionnaire.")
        await env.settle()
        assert "Courrier traité" in env.dovecot.list_mailboxes(None)
        assert len(env.dovecot.list_uids(None, "Courrier traité")) == 1
    finally:
        await channel.stop()


@pytest.mark.parametrize(
    "env", [{"imap_processed_folder": "a/b", "imap_poll_seconds": 0.5}], indirect=True
)
async def test_a_failing_move_is_retried_later_not_in_a_loop(env: Env) -> None:
    """Dovecot refuses "/" in folder names here: the mail is answered once, stays put."""
    calls = 0
    handler = env.channel.watcher.handler

    async def counting(messages):
        nonlocal calls
        calls += 1
        return await handler(messages)

    env.channel.watcher.handler = counting
    person = Person(env, "stuck@example.net", "Stuck")
    await person.write("Hello, I would like to answer the capacity-building questionnaire.")
    await asyncio.sleep(1.2)  # a couple of poll intervals
    assert 1 <= calls <= 4  # retried on the timer, not spinning
    assert len(env.smtp.messages) == 1 and len(env.dovecot.list_uids(None)) == 1


@pytest.mark.parametrize("env", [{"imap_poll_seconds": 0.3}], indirect=True)
async def test_a_turn_the_database_refused_stays_in_the_folder_and_is_retried(env: Env) -> None:
    from bot.service import TurnResult

    service = env.app.service
    real = service.handle
    refused: list[str] = []

    async def once_refused(inbound, **kw):
        if not refused:
            refused.append(inbound.message_id)
            return TurnResult(failed=True)  # as when the commit itself fails
        return await real(inbound, **kw)

    service.handle = once_refused
    person = Person(env, "retry@example.net", "Retry")
    reply = await person.write(
        "Hello, I would like to answer the capacity-building questionnaire."
    )
    assert refused and reply["To"] == person.address
    await env.settle()
    assert len(env.dovecot.list_uids(None, "Processed")) == 1


@pytest.mark.parametrize("mode", ["starttls", "ssl"])
async def test_smtp_tls_and_auth_with_one_connection_reused(
    smtp_server_factory, mode: str
) -> None:
    server = await smtp_server_factory(
        starttls=mode == "starttls", implicit_tls=mode == "ssl", auth={"bot": "pw"}
    )
    sender = SmtpSender(
        SmtpConfig(
            host="127.0.0.1",
            port=server.port,
            security=mode,
            user="bot",
            password="pw",
            cafile=server.cafile,
        )
    )
    try:
        for n in range(3):
            await sender.send(
                "bot@example.org",
                [f"r{n}@example.net"],
                f"Subject: {n}\r\n\r\nbody {n}\r\n".encode(),
            )
        captured = await server.wait_for(3)
        assert all(m.auth_login == "bot" for m in captured)
        if mode == "starttls":  # (aiosmtpd only records TLS that came by STARTTLS)
            assert all(m.tls for m in captured)
        assert sender.connects == 1
    finally:
        await sender.close()


async def test_smtp_errors_are_sorted_for_the_outbox(smtp_server_factory) -> None:
    from bot.outbox import PermanentSendError, TransientSendError

    server = await smtp_server_factory(reject_recipients=["gone@example.net"])
    sender = SmtpSender(SmtpConfig(host="127.0.0.1", port=server.port, security="plain"))
    try:
        with pytest.raises(PermanentSendError):
            await sender.send("bot@example.org", ["gone@example.net"], b"Subject: x\r\n\r\nx\r\n")
        await sender.send("bot@example.org", ["ok@example.net"], b"Subject: y\r\n\r\ny\r\n")
        await server.stop()
        with pytest.raises(TransientSendError):
            await sender.send("bot@example.org", ["ok@example.net"], b"Subject: z\r\n\r\nz\r\n")
    finally:
        await sender.close()


# -- `capbot serve`: the journey in French, killed between commit and send ----------------------


def _serve(env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "bot", "serve"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log.open("ab"),
        start_new_session=True,
    )


async def _wait_for_row(db_url: str, query: str, deadline: float) -> None:
    import sqlite3

    path = db_url.split("///", 1)[1]
    while True:
        try:
            with sqlite3.connect(path) as conn:
                if conn.execute(query).fetchone()[0]:
                    return
        except sqlite3.OperationalError:
            pass  # not created yet
        assert time.monotonic() < deadline, f"timed out waiting for: {query}"
        await asyncio.sleep(0.1)


async def test_capbot_serve_in_french_survives_a_crash_between_commit_and_send(
    imap_server: ImapSettings, tmp_path: Path
) -> None:
    db_url = f"sqlite+aiosqlite:///{tmp_path / 'capbot.db'}"
    smtp_port = free_port()  # nothing listens there yet: the reply cannot go out
    variables = {
        f"CAPBOT_{k.upper()}": str(v) for k, v in settings_for(imap_server, smtp_port).items()
    }
    env = {
        **os.environ,
        **variables,
        "CAPBOT_DATABASE_URL": db_url,
        "CAPBOT_LOG_LEVEL": "INFO",
        "CAPBOT_OUTBOX_LEASE_SECONDS": "3",
    }
    log = tmp_path / "serve.log"
    deadline = time.monotonic() + 60
    dovecot = imap_server.server
    amina = EmailMessage()
    amina["From"] = "Amina Diallo <amina@environnement.example.sn>"
    amina["To"] = imap_server.address
    amina["Subject"] = "Questionnaire"
    amina["Message-ID"] = make_msgid(domain="environnement.example.sn")
    amina.set_content(
        "Bonjour, je souhaite remplir le questionnaire sur le renforcement des "
        "capacités pour mon ministère."
    )

    first = _serve(env, log)
    try:
        dovecot.deliver([imap_server.address], bytes(amina), "amina@environnement.example.sn")
        # Committed (the form is in the outbox) but not sent: SMTP is down. Then: killed.
        await _wait_for_row(
            db_url, "select count(*) from outbox where status = 'pending'", deadline
        )
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(10)

    smtp = SmtpCapture(port=smtp_port)
    await smtp.start()
    second = _serve(env, log)
    try:
        (captured,) = await smtp.wait_for(1, timeout=WAIT)
        form = captured.message
        assert form["To"] == "amina@environnement.example.sn"
        assert "Comment répondre" in body_of(form) and form["Content-Language"] == "fr"
        smtp.clear()
        # The journey, in French: answers, then the confirmation word.
        for body in (
            "1. Amina Diallo\n2. amina@environnement.example.sn\n3. Direction de "
            "l'environnement\n4. 1\n6. Sénégal\n7. Non\n29. Non\n30. 3\n39. Oui",
            "ENVOYER",
        ):
            reply = EmailMessage()
            reply["From"] = "Amina Diallo <amina@environnement.example.sn>"
            reply["To"] = form["Reply-To"]
            reply["Subject"] = "Re: " + form["Subject"]
            reply["Message-ID"] = make_msgid(domain="environnement.example.sn")
            reply["In-Reply-To"] = form["Message-ID"]
            reply.set_content(body)
            dovecot.deliver([form["Reply-To"]], bytes(reply), "amina@environnement.example.sn")
            (captured,) = await smtp.wait_for(1, timeout=WAIT)
            form = captured.message
            smtp.clear()
        assert "Numéro de référence" in body_of(form)
        # An out-of-office reply gets nothing.
        dovecot.deliver(
            [imap_server.address],
            (FIXTURES / "ooo_gmail_vacation_fr.eml").read_bytes(),
            "x@example.net",
        )
        await _wait_for_row(
            db_url, "select count(*) from inbound_messages where status = 'ignored'", deadline
        )
    finally:
        second.send_signal(signal.SIGTERM)
        assert second.wait(20) == 0, log.read_text()[-3000:]
        await smtp.stop()
    assert smtp.messages == []  # nothing after the receipt: the auto-reply was not answered
    # The answers are in the export.
    out = tmp_path / "export"
    await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "bot", "export", "--out", str(out)],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        timeout=120,
    )
    with (out / "submissions.csv").open(encoding="utf-8-sig") as fh:
        (row,) = list(csv.DictReader(fh))
    assert row["R1_name"] == "Amina Diallo" and row["R5_country"] == "sn"
    assert row["channel"] == "email" and row["language"] == "fr"
