"""Issue 8 on Telegram: no update lost to a crash, a flooding chat throttled, forged or failed
button plumbing harmless. Real parts: a `capbot serve` subprocess killed with SIGKILL, the PTB
stack against FakeBotApi on loopback, SQLite files."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
from pathlib import Path

import aiohttp
import pytest

from storage.models import answers, events, inbound_messages
from testkit.fake_bot_api import SECRET_HEADER, FakeBotApi
from testkit.kill_probe import run_probe
from tests.telegram.harness import press_code, running
from tests.telegram.test_channel import answers_of

pytestmark = pytest.mark.filterwarnings("ignore:.*retry_after:DeprecationWarning")


# --- defect 2: an update is confirmed to Telegram only once it is kept ----------------------


async def test_sigkill_under_load_loses_no_update(tmp_path: Path) -> None:
    """Killed the instant a getUpdates offset confirms updates, under load from 20 users: a bot
    that confirms before committing loses about one update per kill (f32d553: 3 in 3)."""
    result = await run_probe(tmp_path, kills=4, mode="confirm", users=20, rate=20.0,
                             uptime=(0.2, 0.6), extra_env={"CAPBOT_TELEGRAM_INBOUND_LIMIT": "0"})
    assert result.sent > 100, result.summary()
    assert result.missing == [] and result.undelivered == [], result.summary()


def test_ledger_offset_stays_at_the_oldest_update_not_kept() -> None:
    from handlers.telegram.intake import UpdateLedger

    ledger = UpdateLedger()
    assert [ledger.admit(i) for i in (10, 11, 12, 11)] == [True, True, True, False]
    assert ledger.offset == 10
    ledger.kept(11)
    assert ledger.offset == 10 and ledger.unconfirmed == 2
    ledger.kept(10)
    assert ledger.offset == 12  # 10 and 11 confirmed by the next getUpdates
    assert not ledger.admit(11)  # handed out again before that: not handled twice
    ledger.release(12)  # could not be kept: handled again when Telegram hands it out again
    assert ledger.offset == 12 and ledger.admit(12) and not ledger.admit(12)
    ledger.kept(12)
    assert ledger.offset == 13 and ledger.unconfirmed == 0


async def test_an_update_the_database_refuses_is_not_confirmed(make_app, sqlite_url,
                                                               api: FakeBotApi) -> None:
    async with running(make_app, sqlite_url, api) as bot:
        user = api.user(8101, language_code="en")
        await bot.step(lambda: user.send_command("/start"))
        with contextlib.suppress(AttributeError):  # f32d553 had PTB's Updater instead
            bot.channel._intake.retry_delay = 0.05  # type: ignore[union-attr]
        service = bot.app.service
        real = service.record_unprocessed
        refusals = [2]

        async def refusing(**kwargs):
            if refusals[0]:
                refusals[0] -= 1
                raise OSError(28, "No space left on device")
            return await real(**kwargs)

        service.record_unprocessed = refusing  # type: ignore[method-assign]
        user.send_text("first")
        edit = user.edit_last_text("edited while the disk was full")  # recorded, not a turn
        await api.wait_for(lambda: refusals[0] == 0, 10)
        # Refused twice: still Telegram's to deliver, so a crash now would lose nothing.
        assert any("edited_message" in u for u in api.pending_updates)
        await api.wait_for(lambda: not api.pending_updates, 10)
        rows = [r for r in await bot.rows(inbound_messages) if r.kind == "edited"]
        assert len(rows) == 1 and rows[0].status == "ignored"
        assert json.loads(rows[0].payload)["edited_message"]["text"] == edit["text"]


async def test_a_turn_stored_nowhere_is_not_confirmed(make_app, sqlite_url,
                                                      api: FakeBotApi) -> None:
    from bot.messages import Reply
    from bot.service import TurnResult

    async with running(make_app, sqlite_url, api) as bot:
        user = api.user(8151, language_code="en")
        await bot.step(lambda: user.send_command("/start"))
        await bot.step(lambda: press_code(user, "en"))
        bot.channel._intake.retry_delay = 0.05  # type: ignore[union-attr]
        service = bot.app.service
        real = service.handle
        refusals = [2]

        async def refusing(inbound, **kwargs):
            if refusals[0]:  # what the service returns when the database and spool refuse
                refusals[0] -= 1
                return TurnResult([Reply("not saved", "error")], failed=True, kept=False)
            return await real(inbound, **kwargs)

        service.handle = refusing  # type: ignore[method-assign]
        before = len(user.messages)
        user.send_text("Ann Lee")
        await api.wait_for(lambda: refusals[0] == 0, 10)
        assert [u["message"]["text"] for u in api.pending_updates] == ["Ann Lee"]
        await api.wait_for(lambda: not api.pending_updates, 10)
        await asyncio.wait_for(bot.channel.wait_idle(), 10)
        _, values = await answers_of(bot, user.id)
        assert values == {"R1_name": "Ann Lee"}  # handled once the database took it
        assert "not saved" not in [m.text for m in user.messages[before:]]


async def test_webhook_answers_200_only_after_the_commit(make_app, tmp_path: Path,
                                                         api: FakeBotApi) -> None:
    from tests.telegram.test_channel import _free_port

    port = _free_port()
    url = f"http://127.0.0.1:{port}/telegram/hook"
    database = f"sqlite+aiosqlite:///{tmp_path / 'hook.db'}"
    async with running(make_app, database, api, telegram_webhook_url=url,
                       telegram_webhook_listen="127.0.0.1", telegram_webhook_port=port,
                       telegram_webhook_secret="hook-secret") as bot:
        user = api.user(8201, language_code="fr")
        headers = {SECRET_HEADER: "hook-secret"}
        bot_id = api.token.split(":")[0]
        async with aiohttp.ClientSession() as session:
            for n in range(8):
                update = {"update_id": 50_000 + n, "message": {
                    "message_id": 500 + n, "from": user.user_json, "chat": user.chat,
                    "date": 1, "text": "/start" if n == 0 else f"Marie {n}"}}
                async with session.post(url, json=update, headers=headers) as response:
                    assert response.status == 200
                # The moment Telegram has its 200, the update is in the database.
                logged = {r.channel_message_id for r in await bot.rows(inbound_messages)}
                assert f"{bot_id}:{50_000 + n}" in logged, n
            # Not kept: 500, so that Telegram delivers it again.
            service = bot.app.service
            real = service.record_unprocessed

            async def refusing(**kwargs):
                raise OSError(28, "No space left on device")

            service.record_unprocessed = refusing  # type: ignore[method-assign]
            edited = {"update_id": 50_100, "edited_message": {
                "message_id": 501, "from": user.user_json, "chat": user.chat, "date": 1,
                "edit_date": 2, "text": "Marie Curie"}}
            async with session.post(url, json=edited, headers=headers) as response:
                assert response.status == 500
            service.record_unprocessed = real  # type: ignore[method-assign]
            async with session.post(url, json=edited, headers=headers) as response:
                assert response.status == 200
        statuses = {r.channel_message_id: r.status for r in await bot.rows(inbound_messages)}
        assert statuses[f"{bot_id}:50100"] == "ignored"


# --- defect 6: a flooding chat is throttled, nothing is lost ---------------------------------


def test_throttle_counts_every_update_and_notices_once_per_episode() -> None:
    from handlers.telegram.throttle import InboundThrottle

    now = [0.0]
    throttle = InboundThrottle(3, 60, clock=lambda: now[0])
    verdicts = []
    for _ in range(6):
        verdicts.append(throttle.check(1))
        now[0] += 1
    assert verdicts == ["pass"] * 3 + ["notice", "quiet", "quiet"]
    assert throttle.check(2) == "pass"  # other chats are not affected
    now[0] += 30  # still flooding within the last minute: stays quiet
    assert throttle.check(1) == "quiet"
    now[0] += 61  # the rate has fallen
    assert throttle.check(1) == "pass"
    assert [throttle.check(1) for _ in range(4)] == ["pass", "pass", "notice", "quiet"]
    assert InboundThrottle(0, 60).check(1) == "pass"


async def test_flooding_chat_gets_one_notice_and_everything_is_kept(make_app, sqlite_url,
                                                                   api: FakeBotApi) -> None:
    async with running(make_app, sqlite_url, api, telegram_inbound_limit=5,
                       telegram_inbound_window=60) as bot:
        clock = [1000.0]
        with contextlib.suppress(AttributeError):  # f32d553 had no throttle
            bot.channel.throttle._clock = lambda: clock[0]
        user = api.user(8301, language_code="es")
        await bot.step(lambda: user.send_command("/start"))
        await bot.step(lambda: press_code(user, "es"))
        before = len(user.messages)
        handled = bot.channel.updates_handled
        for n in range(40):  # a flood: 3 more within the limit, then 37 over it
            user.send_text(f"María {n}")
        await asyncio.wait_for(bot.channel.wait_handled(handled + 40), 30)
        tr = bot.app.translations
        notice = tr.t("es", "telegram.throttled")
        texts = [m.text for m in user.messages[before:]]
        assert texts.count(notice) == 1
        assert len(texts) <= 3 * 2 + 1  # three turns answered (note + question), one notice
        rows = await bot.rows(inbound_messages)
        assert len(rows) == 42  # every update kept, with its raw payload
        throttled = [r for r in rows if r.status == "throttled"]
        assert len(throttled) == 37
        assert all("over 5 updates in 60 s" in r.reason for r in throttled)
        assert {json.loads(r.payload)["message"]["text"] for r in throttled} == {
            f"María {n}" for n in range(3, 40)}
        # Once the rate has fallen, the chat is answered again.
        clock[0] += 61
        await bot.step(lambda: user.send_text("María López"))
        assert user.messages[-1].text != notice and len(user.messages) > before + len(texts)
        assert [r.status for r in await bot.rows(inbound_messages)][-1] == "processed"


# --- smaller ones ------------------------------------------------------------------------------


async def test_callback_data_without_a_slot_is_a_stale_press(make_app, sqlite_url,
                                                             api: FakeBotApi) -> None:
    async with running(make_app, sqlite_url, api) as bot:
        user = api.user(8401, language_code="en")
        await bot.step(lambda: user.send_command("/start"))
        await bot.step(lambda: press_code(user, "en"))
        for text in ("Ann Lee", "ann@example.org", "Ministry"):
            await bot.step(lambda text=text: user.send_text(text))
        question = user.last_message  # R4_orgtype, with buttons "R4_orgtype|<code>"
        assert question.button("R4_orgtype|NGO")
        query = {"id": api.open_callback_query(user), "from": user.user_json,
                 "message": question.data, "chat_instance": "1", "data": "|NGO"}
        await bot.step(lambda: api.enqueue_update({"callback_query": query}))
        tr = bot.app.translations
        assert tr.t("en", "error_stale") in [m.text for m in user.messages[-2:]]
        assert not [a for a in await bot.rows(answers) if a.question_id == "R4_orgtype"]
        assert [e.type for e in await bot.rows(events)].count("stale") == 1


@pytest.mark.parametrize("code,description", [
    (403, "Forbidden: bot was blocked by the user"), (502, "Bad Gateway"),
    (400, "Bad Request: query is too old and response timeout expired or query ID is invalid"),
])
async def test_failed_answer_callback_query_is_handled(make_app, sqlite_url, api: FakeBotApi,
                                                       caplog, code: int,
                                                       description: str) -> None:
    caplog.set_level(logging.DEBUG)
    async with running(make_app, sqlite_url, api) as bot:
        user = api.user(8501, language_code="en")
        await bot.step(lambda: user.send_command("/start"))
        api.fail_method("answerCallbackQuery", code, description)
        await bot.step(lambda: press_code(user, "en"))
        await asyncio.sleep(0.05)
        gc.collect()
        await asyncio.sleep(0)
        assert api.calls("answerCallbackQuery")
        assert len(user.messages) >= 3  # the press itself went through
    messages = [r.getMessage() for r in caplog.records]
    assert not [m for m in messages if "never retrieved" in m]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
