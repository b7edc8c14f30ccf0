"""PostgreSQL restarted under load (issue 13, faults): one `capbot serve` on a PostgreSQL cluster
of its own, Telegram respondents (long polling, the Bot API fake) and mail (Dovecot in, aiosmtpd
out) at once; the cluster is restarted twice in the middle of it, once cleanly (`pg_ctl restart
-m fast`: every session terminated) and once as a crash (`-m immediate`, recovery from the WAL),
each time down for two seconds.

Checked: the same `capbot serve` process goes on by itself (never restarted); every update
acknowledged to Telegram is stored once and processed — none merely kept as "failed" in the
spool, which would lose the respondent's answer — and every respondent submits, each answer
stored once; every mail is answered; the outbox drains; replies sent twice are counted (none
expected: a restart kills no sender between its send and its mark).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from testkit.fake_bot_api import FakeBotApi
from testkit.imap import ImapSettings
from testkit.mixed_kills import ServeProcess, make_mail, serve_env
from testkit.postgres import Postgres
from testkit.process import skip_or_fail
from testkit.respondents import Respondent, duplicate_sends
from testkit.smtp import SmtpCapture

RESPONDENTS, MAILS = 20, 10
WAIT = 90.0  # seconds a respondent waits for the bot at most: an upper bound


async def test_postgres_restarted_under_load_loses_no_acknowledged_answer(
    imap_server: ImapSettings, tmp_path: Path
) -> None:
    if reason := Postgres.missing():
        skip_or_fail(reason)
    pg = Postgres(durable_commits=True)  # as deployed: a crash loses no commit
    await asyncio.to_thread(pg.start)
    smtp = SmtpCapture()
    await smtp.start()
    api = FakeBotApi()
    await api.start()
    url = await asyncio.to_thread(pg.create_database, "capbot")
    env = serve_env(api, imap_server, smtp.port, url)
    env["CAPBOT_SPOOL_PATH"] = str(tmp_path / "spool.jsonl")
    serve = ServeProcess(api, env, tmp_path)
    users = [api.user(840_000 + n, language_code="en") for n in range(RESPONDENTS)]
    mail_ids: list[str] = []
    restarts: list[str] = []
    try:
        await serve.start()
        pid = serve.proc.pid  # type: ignore[union-attr]
        runs = [
            asyncio.create_task(Respondent(api, u, wait=WAIT, think=0.15, seed=n).run())
            for n, u in enumerate(users)
        ]
        turns = RESPONDENTS * 35

        async def deliver(n: int) -> None:
            raw, sender, mid = make_mail(n, imap_server.address)
            await asyncio.to_thread(imap_server.server.deliver, [imap_server.address], raw, sender)
            mail_ids.append(mid)

        for fraction, mode in ((1 / 3, "fast"), (2 / 3, "immediate")):
            await api.wait_for(lambda f=fraction: len(api.confirmed) >= turns * f, WAIT)
            for n in range(len(mail_ids), len(mail_ids) + MAILS // 2):
                await deliver(n)
            started = time.monotonic()
            await asyncio.to_thread(pg.restart, mode, 2.0)
            restarts.append(f"{mode} {time.monotonic() - started:.1f} s")
        try:
            await asyncio.wait_for(asyncio.gather(*runs), WAIT * 3)
        except AssertionError as exc:  # a respondent stuck: what its chat went through
            chat = int(str(exc).split()[1].rstrip(":"))
            raise AssertionError(f"{exc}\n{await _diagnose(url, api, chat)}") from None
        deadline = time.monotonic() + WAIT
        while {m.message["In-Reply-To"] for m in smtp.messages} < set(mail_ids):
            assert time.monotonic() < deadline, f"mails unanswered\n{serve.tail()}"
            await asyncio.sleep(0.2)
        db = create_async_engine(url)
        try:
            deadline = time.monotonic() + WAIT
            while True:  # the outbox drains
                async with db.connect() as conn:
                    pending = (
                        await conn.execute(
                            text("SELECT count(*) FROM outbox WHERE status = 'pending'")
                        )
                    ).scalar_one()
                if pending == 0:
                    break
                assert time.monotonic() < deadline, f"{pending} replies pending\n{serve.tail()}"
                await asyncio.sleep(0.2)
            await asyncio.sleep(4)  # a lease running out now would show as a duplicate
            # The same process all along: it recovered by itself.
            assert serve.proc is not None and serve.proc.poll() is None and serve.proc.pid == pid

            async with db.connect() as conn:

                async def rows(sql: str) -> list:
                    return list((await conn.execute(text(sql))).all())

                inbound = Counter(
                    f"{c}/{m}"
                    for c, m in await rows(
                        "SELECT channel, channel_message_id FROM inbound_messages"
                    )
                )
                statuses = Counter(r[0] for r in await rows("SELECT status FROM inbound_messages"))
                submitted = await rows(
                    "SELECT s.id, count(a.id) FROM submissions s LEFT JOIN answers a "
                    "ON a.submission_id = s.id WHERE s.status = 'submitted' GROUP BY s.id"
                )
                twice = await rows(
                    "SELECT submission_id, question_id, repeat_index FROM answers "
                    "GROUP BY 1, 2, 3 HAVING count(*) > 1"
                )
                outbox = Counter(r[0] for r in await rows("SELECT status FROM outbox"))
        finally:
            await db.dispose()
        log = serve.tail()
    finally:
        serve.terminate()
        await api.stop()
        await smtp.stop()
        await asyncio.to_thread(pg.stop)

    bot_id = api.bot_user["id"]
    acknowledged = {f"telegram/{bot_id}:{u}" for u in api.confirmed}
    sent = {f"telegram/{bot_id}:{u['update_id']}" for u in api.update_log}
    assert acknowledged <= set(inbound) and sent <= set(inbound), log
    assert set(inbound.values()) == {1}
    # Processed, not kept aside: an answer only in the spool would be an answer lost.
    assert statuses == {"processed": sum(statuses.values())}, (statuses, log)
    assert "kept in the spool" not in log
    assert len(submitted) == RESPONDENTS and len({n for _, n in submitted}) == 1
    assert twice == []
    assert {f"email/{m.strip('<>')}" for m in mail_ids} <= set(inbound)
    assert set(outbox) <= {"sent", "coalesced"}, outbox
    _, telegram_duplicates = duplicate_sends(api, users)
    answered = Counter(m.message["In-Reply-To"] for m in smtp.messages)
    email_duplicates = sum(n - 1 for n in answered.values())
    print(
        f"\n{RESPONDENTS} respondents ({len(sent)} updates), {len(mail_ids)} mails, PostgreSQL "
        f"restarted ({', '.join(restarts)}): {len(sent - set(inbound))} updates lost, "
        f"{telegram_duplicates} + {email_duplicates} duplicate replies; outbox {dict(outbox)}"
    )
    assert telegram_duplicates + email_duplicates == 0


async def _diagnose(url: str, api: FakeBotApi, chat: int) -> str:
    """The chat's updates, inbound rows and outbox rows, side by side."""
    lines = ["updates:"]
    for u in api.update_log:
        body = u.get("message") or u.get("callback_query") or {}
        if (body.get("from") or {}).get("id") == chat:
            what = body.get("text") or body.get("data")
            lines.append(
                f"  {u['update_id']} {what!r} acknowledged={api.acknowledged(u['update_id'])}"
            )
    db = create_async_engine(url)
    try:
        async with db.connect() as conn:
            for r in await conn.execute(
                text(
                    "SELECT channel_message_id, status, reason FROM inbound_messages "
                    "WHERE channel_user_id = :c ORDER BY id"
                ),
                {"c": str(chat)},
            ):
                lines.append(f"  inbound {r[0]} {r[1]} {(r[2] or '')[:80]}")
            for r in await conn.execute(
                text(
                    "SELECT id, status, attempts, created_at, sent_at, payload FROM outbox "
                    "WHERE address = :c ORDER BY id"
                ),
                {"c": str(chat)},
            ):
                lines.append(
                    f"  outbox {r[0]} {r[1]} attempts={r[2]} {r[3]:%H:%M:%S.%f} "
                    f"{r[4]} {r[5].get('question')} {str(r[5].get('text'))[:70]!r}"
                )
            for r in await conn.execute(
                text("SELECT state FROM respondents WHERE channel_user_id = :c"), {"c": str(chat)}
            ):
                state = r[0] or {}
                lines.append(
                    f"  state {state.get('phase')} {state.get('at')} {state.get('stack')}"
                )
                lines.append(f"  answers {sorted(state.get('answers', {}))}")
    finally:
        await db.dispose()
    return "\n".join(lines)
