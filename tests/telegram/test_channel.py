"""The Telegram channel: pure translation tables, then capbot end to end through the real
python-telegram-bot stack against a Bot API fake on loopback (testkit/fake_bot_api.py)."""

from __future__ import annotations

import asyncio
import copy
import io
import json
import socket
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bot.i18n import LANGUAGES
from bot.server import telegram_channel
from handlers.telegram.admin import parse_export_args
from handlers.telegram.channel import file_url, webhook_secret
from handlers.telegram.ratelimit import ChatLimiters
from handlers.telegram.translate import (
    MAX_CALLBACK_DATA,
    CallbackCodec,
    answered_html,
    parse_update,
    render_reply,
    split_text,
    utf16_len,
)
from storage.models import answers, events, inbound_messages, outbox, respondents, submissions
from testkit.fake_bot_api import (
    SECRET_HEADER,
    SimulatedUser,
    parse_html,
)
from tests.telegram.harness import (
    ADMIN,
    Running,
    act,
    is_question,
    press_code,
    running,
    settings_for,
)

# PTB 22's RetryAfter reads its own deprecated int property while being built.
pytestmark = pytest.mark.filterwarnings("ignore:.*retry_after:DeprecationWarning")
FIXTURES = Path(__file__).parent / "fixtures"
UPDATE_CASES = json.loads((FIXTURES / "updates.json").read_text(encoding="utf-8"))


# --- pure translation: recorded updates -> events ---------------------------------------------


@pytest.mark.parametrize("case", UPDATE_CASES, ids=[c["name"] for c in UPDATE_CASES])
def test_recorded_updates_translate(case: dict[str, Any]) -> None:
    codec = CallbackCodec()
    event = parse_update(case["update"], bot_id=123456789, bot_username="capbot_test_bot",
                         codec=codec)
    expect = dict(case["expect"])
    inbound = expect.pop("inbound", "absent")
    pressed = expect.pop("pressed", None)
    for key, value in expect.items():
        got = getattr(event, key)
        assert (list(got) if isinstance(got, tuple) else got) == value, key
    if inbound is None:
        assert event.inbound is None
    elif inbound != "absent":
        assert event.inbound is not None
        for key, value in inbound.items():
            assert getattr(event.inbound, key) == value, key
        assert event.inbound.channel == "telegram"
        assert json.loads(event.inbound.raw) == case["update"]  # kept verbatim
    if pressed:
        assert event.pressed is not None
        for key, value in pressed.items():
            assert getattr(event.pressed, key) == value, key
    assert event.message_id == f"123456789:{case['update']['update_id']}"


def test_callback_data_fits_in_64_bytes_and_round_trips(content) -> None:
    questionnaires, _, _ = content
    codec = CallbackCodec.for_questionnaires(questionnaires.values())
    from handlers.telegram.translate import _known_pairs

    pairs = list(_known_pairs(questionnaires.values()))
    assert len(pairs) > 400
    for slot, code in pairs:
        data = codec.encode(slot, code)
        assert 1 <= len(data.encode()) <= MAX_CALLBACK_DATA
        assert codec.decode(data) == (slot, code)
    # Codes or ids too long for 64 bytes travel as a hash; a codec rebuilt from the same
    # questionnaire (after a restart) still decodes them, an unknown hash decodes to None.
    long_slot, long_code = "Q" + "x" * 40 + "@3", "VERY_LONG_OPTION_CODE_" + "Y" * 20
    known = CallbackCodec([(long_slot, long_code)])
    data = known.encode(long_slot, long_code)
    assert data.startswith("#") and len(data.encode()) <= MAX_CALLBACK_DATA
    assert CallbackCodec([(long_slot, long_code)]).decode(data) == (long_slot, long_code)
    assert CallbackCodec().decode(data) is None
    assert codec.decode("junk") is None
    # Data without a slot would skip the engine's stale-button check: it does not decode.
    assert codec.decode("|SUBMIT") is None and codec.decode(codec.encode(None, "x")) is None


def _payload(**fields: Any) -> dict[str, Any]:
    base = {"text": "", "kind": "info", "language": "en", "question": None, "slot": None,
            "multi": False, "progress": None, "choices": []}
    return {**base, **fields}


RENDER_CASES = [
    ("user text is escaped", _payload(text="“<b>oops</b> & co” is not one of the options."),
     "“&lt;b&gt;oops&lt;/b&gt; &amp; co” is not one of the options.", None),
    ("question: progress in italics, prompt in bold, short options packed",
     _payload(text="Question 6 of 24 · Activities\nIs it done?\nReply Yes or No.",
              kind="question", slot="S1_any_activity", question="S1_any_activity",
              progress="Question 6 of 24 · Activities",
              choices=[["YES", "Yes", False], ["NO", "No", False]]),
     "<i>Question 6 of 24 · Activities</i>\n<b>Is it done?</b>\nReply Yes or No.",
     [[["Yes", "S1_any_activity|YES"], ["No", "S1_any_activity|NO"]]]),
    ("multi-choice: selected options ticked, Done on its own row",
     _payload(text="Role?", kind="question", slot="A3_role@0", multi=True,
              choices=[["FUNDING", "Funder", True], ["BENEFICIARY", "Beneficiary", False],
                       ["DONE", "Done", False]]),
     "<b>Role?</b>",
     [[["✅ Funder", "A3_role@0|FUNDING"], ["Beneficiary", "A3_role@0|BENEFICIARY"]],
      [["Done", "A3_role@0|DONE"]]]),
    ("long labels: numbered in the text, numbers on the buttons",
     _payload(text="Type?", kind="question", slot="R4_orgtype",
              choices=[["PARTY_GOV", "Government of a Party to the Cartagena Protocol", False],
                       ["NGO", "Non-governmental or civil society organization", False]]),
     "<b>Type?</b>\n\n1. Government of a Party to the Cartagena Protocol\n"
     "2. Non-governmental or civil society organization",
     [[["1", "R4_orgtype|PARTY_GOV"], ["2", "R4_orgtype|NGO"]]]),
    ("language menu: proposal ticked, three per row",
     _payload(text="Je poursuivrai en Français.", kind="language_menu", slot="language",
              choices=[[lang, lang.upper(), lang == "fr"] for lang in LANGUAGES]),
     "Je poursuivrai en Français.",
     [[["AR", "language|ar"], ["EN", "language|en"], ["ES", "language|es"]],
      [["✅ FR", "language|fr"], ["RU", "language|ru"], ["ZH", "language|zh"]]]),
]


@pytest.mark.parametrize("name,payload,html,keyboard", RENDER_CASES,
                         ids=[c[0] for c in RENDER_CASES])
def test_replies_render(name: str, payload: dict, html: str, keyboard: list | None) -> None:
    rendered = render_reply(payload, CallbackCodec())
    (part,) = rendered.parts
    assert part.html == html
    parse_html(part.html)  # valid for Telegram's parser
    rows = [[list(b) for b in row] for row in part.keyboard] if part.keyboard else None
    assert rows == keyboard
    if keyboard:
        assert part.reply_markup["inline_keyboard"][0][0]["callback_data"] == keyboard[0][0][1]


def test_long_replies_are_split_within_telegrams_limit() -> None:
    review = "Review:\n" + "\n".join(f"{n}. Question {n}?\n   → {'答' * 150}" for n in range(60))
    payload = _payload(text=review, kind="review", slot="review",
                       choices=[["SUBMIT", "Submit", False]])
    rendered = render_reply(payload, CallbackCodec())
    assert len(rendered.parts) > 2
    for part in rendered.parts:
        text, _ = parse_html(part.html)
        assert 1 <= utf16_len(text) <= 4096
    assert [p.keyboard is not None for p in rendered.parts] == \
        [False] * (len(rendered.parts) - 1) + [True]
    joined = "".join(parse_html(p.html)[0] for p in rendered.parts)
    assert joined.replace("\n", "") == review.replace("\n", "")
    emoji = "😀" * 3000  # two UTF-16 units each: 6000 units
    parts = split_text(emoji)
    assert [utf16_len(p) for p in parts] == [4096, 1904] and "".join(parts) == emoji
    assert answered_html("<b>Q</b>", "x" * 5000) is None
    assert answered_html("<b>Q</b>", "<A & B>") == "<b>Q</b>\n\n✔ <b>&lt;A &amp; B&gt;</b>"


async def test_chat_limiters_allow_a_burst_per_chat_then_pace_it() -> None:
    chats = ChatLimiters(rate=1.0, burst=3, max_chats=2)
    for _ in range(3):
        await asyncio.wait_for(chats.wait(7), 1)  # the burst goes at once
    assert not chats.limiter(7).has_capacity()  # the fourth waits about a second
    assert chats.limiter(8).has_capacity()  # other chats are not held back
    chats.limiter(9)  # past max_chats: the idle chat 8 is forgotten, the busy chat 7 kept
    assert len(chats) == 2 and not chats.limiter(7).has_capacity()
    assert not ChatLimiters(rate=0).enabled


@pytest.mark.parametrize("args,expected", [
    ([], {"status": "submitted", "lang": None, "split_multi": False}),
    (["all", "fr"], {"status": "all", "lang": "fr"}),
    (["draft", "split", "email", "country=KE", "--since", "2025-01-01"],
     {"status": "draft", "split_multi": True, "channel": "email", "country": "ke"}),
])
def test_export_options_in_simple_form(args: list[str], expected: dict) -> None:
    options = parse_export_args(args)
    for key, value in expected.items():
        assert getattr(options, key) == value
    if "--since" in args:
        assert options.since is not None


@pytest.mark.parametrize("args,option", [(["everything"], "/export"), (["lang=xx"], "--lang"),
                                         (["all", "draft"], "--status"), (["colour=red"],
                                                                           "--colour")])
def test_bad_export_options_name_the_option(args: list[str], option: str) -> None:
    from reports.options import ExportOptionError

    with pytest.raises(ExportOptionError) as info:
        parse_export_args(args)
    assert str(info.value).startswith(option)


async def test_updates_of_one_chat_in_order_other_chats_not_held_back() -> None:
    from telegram import Update

    from handlers.telegram.ordering import PerChatUpdateProcessor

    processor = PerChatUpdateProcessor(max_concurrent=2)
    done: list[str] = []
    release, other_chat_done = asyncio.Event(), asyncio.Event()

    async def work(name: str, wait: bool = False) -> None:
        if wait:
            await release.wait()
        done.append(name)
        if name == "2":
            other_chat_done.set()

    def update(update_id: int, chat: int) -> Update:
        message = {"message_id": update_id, "date": 0, "text": "x",
                   "chat": {"id": chat, "type": "private"}}
        return Update.de_json({"update_id": update_id, "message": message}, None)

    # Chat 1: a slow update, then a burst of fast ones; chat 2 arrives last.
    jobs = [(update(1, 1), work("1-slow", wait=True))]
    jobs += [(update(n, 1), work(f"1-fast-{n}")) for n in range(2, 8)]
    jobs += [(update(9, 2), work("2"))]
    tasks = [asyncio.create_task(processor.process_update(u, c)) for u, c in jobs]
    await asyncio.wait_for(other_chat_done.wait(), 5)  # not stuck behind chat 1
    assert done == ["2"]
    assert processor.busy_chats == 1
    release.set()
    await asyncio.gather(*tasks)
    assert done == ["2", "1-slow", *(f"1-fast-{n}" for n in range(2, 8))]
    assert processor.busy_chats == 0


async def test_sender_maps_telegram_errors() -> None:
    from datetime import timedelta

    from telegram.error import BadRequest, Forbidden, NetworkError, RetryAfter, TimedOut

    from bot.outbox import PermanentSendError, TransientSendError
    from handlers.telegram.sender import TelegramSender

    sender = TelegramSender(None, CallbackCodec())  # type: ignore[arg-type]
    answers: list[Any] = [RetryAfter(timedelta(milliseconds=10)), "sent"]

    async def flaky() -> Any:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert await sender.call(flaky) == "sent"  # a 429 waits retry_after and tries again
    for error, expected in [(Forbidden("Forbidden: bot was blocked by the user"),
                             PermanentSendError),
                            (BadRequest("Chat not found"), PermanentSendError),
                            (TimedOut(), TransientSendError),
                            (NetworkError("Bad Gateway"), TransientSendError),
                            (BadRequest("Message text is empty"), BadRequest)]:
        answers[:] = [error]
        with pytest.raises(expected):
            await sender.call(flaky)


def test_configuration_helpers() -> None:
    assert file_url("http://127.0.0.1:8081/bot") == "http://127.0.0.1:8081/file/bot"

    @dataclass
    class S:
        telegram_token: str = "1:abc"
        telegram_webhook_secret: str | None = None

    derived = webhook_secret(S())
    assert derived == webhook_secret(S()) and len(derived) == 64 and derived.isalnum()
    assert webhook_secret(S(telegram_webhook_secret="given")) == "given"


# --- end to end ------------------------------------------------------------------------------


TEXTS = {
    "ar": {"name": "أمينة ديالو", "org": "وزارة البيئة", "country": "كينيا",
           "title": "حلقة عمل بشأن تقييم المخاطر", "trained": "٢٥",
           "summary": "تدريب ٢٥ من مقيّمي المخاطر."},
    "ru": {"name": "Ирина Петрова", "org": "Министерство природных ресурсов",
           "country": "Кения", "title": "Семинар по оценке рисков", "trained": "25",
           "summary": "Обучено 25 специалистов по оценке рисков."},
    "es": {"name": "María López", "org": "Ministerio de Ambiente", "country": "Kenia",
           "title": "Taller sobre evaluación del riesgo", "trained": "25",
           "summary": "Se capacitó a 25 evaluadores de riesgos."},
    "fr": {"name": "Marie Curie", "org": "Ministère de l'Environnement", "country": "Kenya",
           "title": "Atelier sur l'évaluation des risques", "trained": "25",
           "summary": "Formation de 25 évaluateurs des risques."},
}


def full_run(lang: str) -> list[tuple[str, str]]:
    """Every question of the questionnaire with one activity, by buttons and typed text."""
    t = TEXTS[lang]
    return [
        ("choice", lang),  # confirm the language proposed from language_code
        ("text", t["name"]), ("text", f"{lang}.focal@example.org"), ("text", t["org"]),
        ("choice", "PARTY_GOV"), ("text", t["country"]), ("choice", "YES"),
        ("text", t["title"]), ("choice", "PROJECT"),
        ("choice", "IMPLEMENTING"), ("choice", "FUNDING"), ("choice", "DONE"),  # toggles
        ("choice", "NATIONAL"), ("text", "KE, UG"), ("choice", "COMPLETED"),
        ("text", "2023-05"), ("text", "2023-11"), ("text", "3, 4"),
        ("choice", "TRAINING_WORKSHOP"), ("choice", "DONE"), ("text", "/skip"),
        ("text", t["trained"]), ("text", "2, 3"), ("text", "15000 USD"),
        ("text", t["summary"]), ("text", "/skip"), ("choice", "NO"),
        ("choice", "YES"), ("choice", "YES_SOME"), ("text", "1, 3"), ("text", "/skip"),
        ("text", "/skip"), ("choice", "YES"), ("choice", "YES"), ("text", "/skip"),
        ("choice", "SUBMIT"),
    ]


async def answers_of(bot: Running, user_id: int) -> tuple[Any, dict[str, Any]]:
    subs = [s for s in await bot.rows(submissions)]
    resp = {r.id: r for r in await bot.rows(respondents)}
    (sub,) = [s for s in subs if resp[s.respondent_id].channel_user_id == str(user_id)]
    questions = bot.app.questionnaire.questions
    values = {(f"{a.question_id}@{a.repeat_index}" if questions[a.question_id].repeated
               else a.question_id): a.value
              for a in await bot.rows(answers) if a.submission_id == sub.id}
    return sub, values


async def run_script(bot: Running, user: SimulatedUser, steps: list[tuple[str, str]]) -> None:
    for kind, value in steps:
        await bot.step(act(user, kind, value))


@pytest.mark.parametrize("lang", ["ar", "ru", "es"])
async def test_full_questionnaire_with_buttons_and_text(make_app, sqlite_url, api,
                                                        lang: str) -> None:
    async with running(make_app, sqlite_url, api) as bot:
        user = api.user(5000 + LANGUAGES.index(lang), "Focal", language_code=lang)
        await bot.step(lambda: user.send_command("/start"))
        menu = user.last_message
        assert [b["callback_data"] for b in menu.buttons] == [f"language|{x}" for x in LANGUAGES]
        await run_script(bot, user, full_run(lang))

        tr, qn = bot.app.translations, bot.app.questionnaire
        sub, values = await answers_of(bot, user.id)
        assert sub.status == "submitted" and sub.language == lang and sub.channel == "telegram"
        assert values["R1_name"] == TEXTS[lang]["name"]
        assert values["R4_orgtype"] == "PARTY_GOV" and values["R5_country"] == "ke"
        assert values["A3_role@0"] == ["IMPLEMENTING", "FUNDING"]
        assert values["A5_countries@0"] == ["ke", "ug"]
        assert values["A9_areas@0"] == ["RISK_ASSESSMENT", "RISK_MANAGEMENT"]
        assert values["A12_trained@0"] == 25 and values["A11_audience@0"] is None
        assert values["N3_need_areas"] == ["INSTITUTIONAL", "RISK_ASSESSMENT"]
        receipt = user.last_message
        assert receipt.text == tr.t(lang, "submitted", ref=sub.reference, version=1)
        # The chat reads as a clean record: no keyboard left, every question shows its answer.
        assert all(m.reply_markup is None for m in user.messages)
        questions = [m for m in user.messages if is_question(m)]
        assert len(questions) >= 30
        assert all("\n\n✔ " in m.text for m in questions), [m.text for m in questions
                                                             if "✔" not in m.text][:2]
        role = qn.questions["A3_role"]
        prompt = tr.question_prompt(lang, qn, role)
        (role_message,) = [m for m in questions if prompt in m.text]  # toggled in place
        labels = tr.raw(lang, "choice_list_sep").join(  # "؛ " in Arabic, "；" in Chinese
            tr.option_label(lang, qn, role, c) for c in ("IMPLEMENTING", "FUNDING"))
        assert role_message.text.endswith(f"✔ {labels}")
        assert menu.text.endswith("✔ " + tr.language_name(lang))
        # setMyCommands in every language, admins with /export and /stats on top.
        for code in LANGUAGES:
            listed = api.my_commands(code)
            assert [c["command"] for c in listed] == ["start", "back", "skip", "review",
                                                      "language", "help", "cancel", "email",
                                                      "stop"]
            assert listed[0]["description"] == tr.t(code, "telegram.commands.start")
        admin_scope = {"type": "chat", "chat_id": ADMIN}
        assert [c["command"] for c in api.my_commands("fr", admin_scope)][-2:] == \
            ["export", "stats"]
        # Every update is in the inbound log with its update id, and nothing is left unsent.
        logged = await bot.rows(inbound_messages)
        assert len(logged) == len(full_run(lang)) + 1
        assert {r.channel_message_id.split(":")[0] for r in logged} == {api.token.split(":")[0]}
        assert {r.status for r in await bot.rows(outbox)} == {"sent"}


async def test_restart_mid_conversation_loses_nothing(make_app, sqlite_url, api) -> None:
    steps = full_run("fr")
    user = api.user(6001, "Marie", language_code="fr")
    async with running(make_app, sqlite_url, api) as bot:
        await bot.step(lambda: user.send_command("/start"))
        await run_script(bot, user, steps[:10])  # stops between two multi-choice toggles
    await bot.app.close()
    async with running(make_app, sqlite_url, api) as bot:
        # A button of a question sent before the restart still works.
        await run_script(bot, user, steps[10:])
        sub, values = await answers_of(bot, user.id)
        assert sub.status == "submitted"
        assert values["A3_role@0"] == ["IMPLEMENTING", "FUNDING"]
        assert values["R1_name"] == "Marie Curie" and len(values) >= 30
        assert all(m.reply_markup is None for m in user.messages)


async def test_stale_and_double_presses_record_once(make_app, sqlite_url, api) -> None:
    async with running(make_app, sqlite_url, api) as bot:
        user = api.user(6101, language_code="en")
        await bot.step(lambda: user.send_command("/start"))
        await run_script(bot, user, [("choice", "en"), *full_run("fr")[1:4]])
        question = user.last_message
        before = copy.deepcopy(question.data)  # as a slow client still shows it
        # Double press: two updates for one button before the bot answered either.
        first = press_code(user, "NGO")
        second = user.press(question.button("R4_orgtype|NGO")["callback_data"], question)
        count = bot.channel.updates_handled + 2
        await asyncio.wait_for(bot.channel.wait_handled(count), 20)
        assert {first, second} <= {a["callback_query_id"] for a in user.callback_answers}
        tr = bot.app.translations
        texts = [m.text for m in user.messages]
        assert texts.count(tr.t("en", "error_stale")) == 1
        _, values = await answers_of(bot, user.id)
        assert values["R4_orgtype"] == "NGO"
        # A press on an old question, later: a note and the current question, nothing recorded.
        await bot.step(lambda: user.send_text("Kenya"))
        current = user.last_message
        query = {"id": api.open_callback_query(user), "from": user.user_json, "message": before,
                 "chat_instance": "1", "data": "R4_orgtype|UN_BODY"}
        await bot.step(lambda: api.enqueue_update({"callback_query": query}))
        assert user.messages[-2].text == tr.t("en", "error_stale")
        assert user.last_message.text == current.text and user.last_message is not current
        _, values = await answers_of(bot, user.id)
        assert values["R4_orgtype"] == "NGO"
        stale = [e for e in await bot.rows(events) if e.type == "stale"]
        assert len(stale) == 2
        assert all(m.reply_markup is None for m in user.messages[:-1])


async def test_non_text_messages_get_a_polite_localized_reply(make_app, sqlite_url,
                                                               api) -> None:
    async with running(make_app, sqlite_url, api) as bot:
        user = api.user(6201, language_code="es")
        await bot.step(lambda: user.send_command("/start"))
        await bot.step(lambda: press_code(user, "es"))
        tr = bot.app.translations
        for send in (user.send_photo, user.send_sticker, user.send_voice, user.send_document,
                     user.send_location):
            await bot.step(send)
            note, again = user.messages[-2:]
            assert note.text == tr.t("es", "error_unsupported")
            assert is_question(again)  # and the current question again
        await bot.step(lambda: user.send_text("<b>María</b> & <i>co</i>"))
        assert "✔ <b>María</b> & <i>co</i>" in user.messages[-2].text  # escaped, shown as typed
        await bot.step(lambda: user.edit_last_text("María López"))
        assert user.last_message.text == tr.t("es", "telegram.edited_ignored")
        logged = {r.kind: r for r in await bot.rows(inbound_messages)}
        assert logged["unsupported"].status == "processed"
        assert logged["edited"].status == "ignored"
        edited = json.loads(logged["edited"].payload)  # the update as Telegram sent it
        assert edited["edited_message"]["text"] == "María López"
        _, values = await answers_of(bot, user.id)
        assert values["R1_name"] == "<b>María</b> & <i>co</i>"


async def test_group_chats_are_refused_with_an_explanation(make_app, sqlite_url, api) -> None:
    async with running(make_app, sqlite_url, api) as bot:
        ann = api.user(6301, "Ann", language_code="ru")
        group = api.group(-1006301, "Focal points", members=(ann,))
        await bot.step(lambda: group.send_command("/start@capbot_test_bot"))
        await bot.step(lambda: group.send_text("hello all"))
        (note,) = group.messages
        assert note.text == bot.app.translations.t("ru", "telegram.group_refused",
                                                   bot="@capbot_test_bot")
        assert not ann.messages and not await bot.rows(respondents)
        assert {r.status for r in await bot.rows(inbound_messages)} == {"rejected"}


async def test_blocked_user_becomes_unreachable(make_app, sqlite_url, api) -> None:
    async with running(make_app, sqlite_url, api) as bot:
        user = api.user(6401, language_code="en")
        await bot.step(lambda: user.send_command("/start"))
        api.block_user(user.id)
        await bot.step(lambda: press_code(user, "en"))
        (row,) = await bot.rows(respondents)
        assert row.unreachable
        assert {r.status for r in await bot.rows(outbox)} == {"sent", "failed"}
        api.block_user(user.id, False)  # Telegram tells the bot when it is unblocked
        update = {"chat": user.chat, "from": user.user_json, "date": 1,
                  "old_chat_member": {"user": api.bot_user, "status": "kicked", "until_date": 0},
                  "new_chat_member": {"user": api.bot_user, "status": "member"}}
        await bot.step(lambda: api.enqueue_update({"my_chat_member": update}))
        (row,) = await bot.rows(respondents)
        assert not row.unreachable


async def test_429_storm_delays_but_drops_nothing(make_app, sqlite_url, api) -> None:
    async with running(make_app, sqlite_url, api) as bot:
        users = [api.user(6500 + n, language_code="fr") for n in range(4)]
        for user in users:
            await bot.step(lambda user=user: user.send_command("/start"))
        api.force_429(10, retry_after=1)
        handled = bot.channel.updates_handled
        for user in users:
            press_code(user, "fr")
            user.send_text(TEXTS["fr"]["name"])
        await asyncio.wait_for(bot.channel.wait_handled(handled + 8), 60)
        assert sum(r.status == 429 for r in api.requests) == 10
        for user in users:
            texts = [m.text for m in user.messages]
            assert "Marie Curie" in texts[-2] and is_question(user.last_message)
            assert len(texts) == 5  # menu, language set, welcome, question 1, question 2
        assert {r.status for r in await bot.rows(outbox)} == {"sent"}


async def test_network_errors_are_retried_with_backoff(make_app, sqlite_url, api,
                                                       monkeypatch) -> None:
    from telegram.error import NetworkError

    from handlers.telegram.request import AiohttpRequest

    real = AiohttpRequest.do_request
    failures = {"sendMessage": 2}

    async def flaky(self, url: str, *args: Any, **kwargs: Any) -> tuple[int, bytes]:
        method = url.rsplit("/", 1)[-1]
        if failures.get(method):
            failures[method] -= 1
            raise NetworkError("connection reset by peer")
        return await real(self, url, *args, **kwargs)

    async with running(make_app, sqlite_url, api) as bot:
        user = api.user(6551, language_code="en")
        monkeypatch.setattr(AiohttpRequest, "do_request", flaky)
        await bot.step(lambda: user.send_command("/start"))
        assert failures == {"sendMessage": 0}
        (menu,) = user.messages  # delivered once, after two failed attempts
        assert menu.button("language|en")
        (row,) = await bot.rows(outbox)
        assert (row.status, row.attempts) == ("sent", 3)  # each try is counted before it


async def test_rate_limited_sending_against_telegrams_flood_limits(make_app, sqlite_url,
                                                                    api) -> None:
    api.set_flood_limit(per_chat_per_second=5)
    async with running(make_app, sqlite_url, api, telegram_rate_limit=True,
                       telegram_chat_rate=4, telegram_chat_burst=1) as bot:
        user = api.user(6601, language_code="en")
        await bot.step(lambda: user.send_command("/start"))
        await bot.step(lambda: press_code(user, "en"))  # edit + three messages
        assert len(user.messages) == 4 and is_question(user.last_message)
        paced = [r for r in api.requests if str(r.params.get("chat_id")) == str(user.id)]
        assert paced and all(r.status == 200 for r in paced)


async def test_updates_are_logged_as_sent_even_one_ptb_cannot_read(make_app, sqlite_url,
                                                                    api) -> None:
    """getUpdates is read as JSON: the log holds what Telegram sent, fields PTB does not know
    included; an update PTB's de_json refuses (here a poll from before Bot API 9.6) is kept
    raw and does not stop the intake."""
    async with running(make_app, sqlite_url, api) as bot:
        user = api.user(6651, language_code="en")
        await bot.step(lambda: user.send_command("/start"))
        handled = bot.channel.updates_handled
        unreadable = api.enqueue_update({"message": {
            "message_id": 77, "from": user.user_json, "chat": user.chat, "date": 1,
            "poll": {"id": "5", "question": "?", "options": [], "total_voter_count": 0,
                     "is_closed": True, "is_anonymous": True, "type": "regular",
                     "allows_multiple_answers": False},
            "a_field_from_a_newer_bot_api": {"x": [1, "é"]}}})
        await asyncio.wait_for(bot.channel.wait_handled(handled + 1), 20)
        await bot.step(lambda: press_code(user, "en"))
        assert is_question(user.last_message)  # still answered after it
        logged = {r.channel_message_id: r for r in await bot.rows(inbound_messages)}
        row = logged[f"{api.token.split(':')[0]}:{unreadable['update_id']}"]
        assert json.loads(row.payload) == unreadable


async def test_webhook_mode_checks_the_secret(make_app, sqlite_url, api) -> None:
    port = _free_port()
    url = f"http://127.0.0.1:{port}/telegram/hook"
    async with running(make_app, sqlite_url, api, telegram_webhook_url=url,
                       telegram_webhook_listen="127.0.0.1", telegram_webhook_port=port,
                       telegram_webhook_secret="s3cret-token_1") as bot:
        assert api.webhook["url"] == url and api.webhook["secret_token"] == "s3cret-token_1"
        assert "callback_query" in api.webhook["allowed_updates"]
        user = api.user(6701, language_code="zh")
        await bot.step(lambda: user.send_command("/start"))
        assert user.last_message.button("✅ 中文")
        update = {"update_id": 99001, "message": {
            "message_id": 99, "from": user.user_json, "chat": user.chat, "date": 1,
            "text": "/help"}}
        async with aiohttp.ClientSession() as session:
            for headers in ({SECRET_HEADER: "wrong"}, {}):
                async with session.post(url, json=update, headers=headers) as response:
                    assert response.status == 403
            assert bot.channel.updates_handled == 1
            handled = bot.channel.updates_handled
            for _ in range(2):  # Telegram delivers again when unsure: handled once
                async with session.post(url, json=update,
                                        headers={SECRET_HEADER: "s3cret-token_1"}) as response:
                    assert response.status == 200
        await asyncio.wait_for(bot.channel.wait_handled(handled + 2), 20)
        assert len(user.messages) == 2
        logged = [r.channel_message_id for r in await bot.rows(inbound_messages)]
        assert logged.count(f"{api.token.split(':')[0]}:99001") == 1


async def test_admin_export_and_stats_non_admin_refused(make_app, sqlite_url, api) -> None:
    async with running(make_app, sqlite_url, api) as bot:
        user = api.user(6801, "Marie", language_code="fr")
        await bot.step(lambda: user.send_command("/start"))
        await run_script(bot, user, full_run("fr"))
        admin = api.user(ADMIN, "Secretariat", language_code="fr")
        await bot.step(lambda: admin.send_command("/export", "all fr"))
        document = admin.last_message
        assert document.document["file_name"].endswith(".zip")
        archive = zipfile.ZipFile(io.BytesIO(api.file_bytes(document.document["file_id"])))
        assert {"submissions.csv", "answers.csv", "codebook.csv"} <= set(archive.namelist())
        table = archive.read("submissions.csv").decode("utf-8-sig")
        assert "Marie Curie" in table and "telegram" in table
        assert "Gouvernement d'une Partie" in archive.read("answers.csv").decode("utf-8-sig")
        assert "1" in document.text  # caption: counts
        await bot.step(lambda: admin.send_command("/export", "everything"))
        assert admin.last_message.text.startswith(
            bot.app.translations.t("fr", "telegram.export_failed", error="/export"))
        await bot.step(lambda: admin.send_command("/stats"))
        assert "Reporting round" in admin.last_message.text
        assert admin.last_message.data["entities"][0]["type"] == "pre"

        before = len(user.messages)
        for command in ("/export", "/stats"):
            await bot.step(lambda command=command: user.send_command(command, "all"))
        refusals = user.messages[before:]
        assert [m.text for m in refusals] == [bot.app.translations.t(
            "fr", "telegram.admin_only")] * 2
        assert all(m.document is None for m in user.messages)
        logged = {r.channel_user_id: r.status for r in await bot.rows(inbound_messages)
                  if r.kind == "command"}
        assert logged == {str(ADMIN): "processed", str(user.id): "rejected"}


async def test_concurrent_chats_in_order_on_postgres(make_app, postgres_url, api) -> None:
    async with running(make_app, postgres_url, api) as bot:
        users = [api.user(6900 + n, language_code="ru") for n in range(5)]
        handled = bot.channel.updates_handled
        for user in users:  # several updates per chat queued at once
            user.send_command("/start")
        await asyncio.wait_for(bot.channel.wait_handled(handled + 5), 20)
        handled = bot.channel.updates_handled
        for user in users:
            press_code(user, "ru")
            user.send_text(TEXTS["ru"]["name"])
            user.send_text(f"{user.id}@example.org")
        await asyncio.wait_for(bot.channel.wait_handled(handled + 15), 30)
        for user in users:
            _, values = await answers_of(bot, user.id)
            assert values == {"R1_name": TEXTS["ru"]["name"],
                              "R2_email": f"{user.id}@example.org"}
            assert is_question(user.last_message)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_start_fails_clearly_on_a_wrong_token_or_unreachable_api(make_app, sqlite_url,
                                                                      api) -> None:
    from bot.config import ConfigError

    app = await make_app(sqlite_url, **settings_for(api, telegram_token="42:wrong-token"))
    with pytest.raises(ConfigError, match="CAPBOT_TELEGRAM_TOKEN"):
        await telegram_channel(app).start()
    nowhere = f"http://127.0.0.1:{_free_port()}/bot"
    app = await make_app(sqlite_url, **settings_for(api, telegram_api_url=nowhere))
    with pytest.raises(ConfigError, match="CAPBOT_TELEGRAM_API_URL"):
        await telegram_channel(app, start_attempts=1).start()
