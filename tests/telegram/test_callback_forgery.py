"""Hand-made callback_data changes nothing it should not (issue 13, abuse).

A Telegram client may send any callback_data (up to 64 bytes) for any message of its own chat:
another user's button data, random bytes, 64-byte strings, the buttons of an earlier question.
Through the real python-telegram-bot stack and the Bot API fake, each forged press must leave
the other user's draft untouched, record nothing invalid in the sender's draft, answer the
callback query, and give a polite answer in the sender's language (then the current question).
"""

from __future__ import annotations

import copy
import json
import os
import random
import subprocess
import sys
from typing import Any

import pytest

from bot.app import load_content
from bot.config import load_settings
from bot.i18n import LANGUAGES
from storage.models import answers, events, respondents, submissions
from testkit.fake_bot_api import ChatMessage, SimulatedUser
from tests.telegram.harness import Running, act, press_code, running

pytestmark = pytest.mark.filterwarnings("ignore:.*retry_after:DeprecationWarning")

SEED = 1313
RANDOM_PRESSES = 60


async def draft_of(bot: Running, user_id: int) -> dict[str, Any]:
    """What a press could change: the conversation's phase, slot, language, answers and
    pending toggles, and the answer rows of the respondent's submissions."""
    (resp,) = [r for r in await bot.rows(respondents) if r.channel_user_id == str(user_id)]
    subs = {s.id for s in await bot.rows(submissions) if s.respondent_id == resp.id}
    rows = sorted(
        (a.submission_id, a.question_id, a.repeat_index, repr(a.value))
        for a in await bot.rows(answers)
        if a.submission_id in subs
    )
    st = resp.state
    return {
        "phase": st.get("phase"),
        "slot": st.get("slot"),
        "lang": st.get("lang"),
        "answers": copy.deepcopy(st.get("answers")),
        "pending": st.get("pending"),
        "rows": rows,
        "submissions": sorted(subs),
    }


async def run_script_steps(
    bot: Running, user: SimulatedUser, steps: list[tuple[str, str]]
) -> None:
    for kind, value in steps:
        await bot.step(act(user, kind, value))


def forge(
    bot: Running,
    user: SimulatedUser,
    data: Any,
    message: ChatMessage | None = None,
    *,
    drop_data: bool = False,
) -> str:
    """A callback query for `message` (default: the chat's latest bot message) with any data."""
    message = message or next(m for m in reversed(user.messages) if m.from_bot)
    query: dict[str, Any] = {
        "id": bot.api.open_callback_query(user),
        "from": user.user_json,
        "message": message.data,
        "chat_instance": "1",
    }
    if not drop_data:
        query["data"] = data
    bot.api.enqueue_update({"callback_query": query})
    return query["id"]


def random_data(rng: random.Random) -> str:
    """Random bytes as a client could put them in callback_data (a string in the JSON)."""
    raw = rng.randbytes(rng.randint(1, 64))
    kind = rng.randrange(4)
    if kind == 0:
        return raw.decode("latin-1")
    if kind == 1:
        return raw.decode("utf-8", "replace")
    if kind == 2:  # shaped like ours: slot|code of random text
        return (raw[:20].hex() + "|" + raw[20:].hex())[:64]
    return "#" + raw.hex()[:63]  # shaped like a hashed pair


async def press_forged(
    bot: Running,
    user: SimulatedUser,
    victim: SimulatedUser,
    data: Any,
    message: ChatMessage | None = None,
    **kw: Any,
) -> list[ChatMessage]:
    """One forged press; checks what must hold after any of them, returns the bot's answer."""
    mine, theirs = await draft_of(bot, user.id), await draft_of(bot, victim.id)
    victim_seen = len(victim.messages)
    before = len(user.messages)
    query_id = None

    def send() -> None:
        nonlocal query_id
        query_id = forge(bot, user, data, message, **kw)

    await bot.step(send)
    assert await draft_of(bot, victim.id) == theirs, f"victim's draft changed by {data!r}"
    assert len(victim.messages) == victim_seen, f"victim got a message for {data!r}"
    assert await draft_of(bot, user.id) == mine, f"sender's draft changed by {data!r}"
    assert query_id in {a["callback_query_id"] for a in user.callback_answers}, data
    new = [m for m in user.messages[before:] if m.from_bot]
    state = await draft_of(bot, user.id)
    question = bot.app.questionnaire.questions[state["slot"].split("@")[0]]
    prompt = bot.app.translations.question_prompt(state["lang"], bot.app.questionnaire, question)
    slot = state["slot"] + "|"
    live = any(  # or its message, buttons and all, is still there to press
        b.get("callback_data", "").startswith(slot) for m in user.messages for b in m.buttons
    )
    assert new and (prompt in (new[-1].text or "") or live), [m.text for m in new]
    return new


async def test_forged_callback_data_changes_nothing_it_should_not(
    make_app, sqlite_url, api
) -> None:
    async with running(make_app, sqlite_url, api) as bot:
        tr = bot.app.translations
        victim = api.user(7301, "Marie", language_code="fr")
        sender = api.user(7302, "Ivan", language_code="ru")
        menus = {}
        for user, lang in ((victim, "fr"), (sender, "ru")):
            await bot.step(lambda user=user: user.send_command("/start"))
            # As a client that did not refresh still shows it, buttons and all.
            menus[user.id] = ChatMessage(copy.deepcopy(user.last_message.data), from_bot=True)
            await bot.step(lambda user=user, lang=lang: press_code(user, lang))
        # The victim is at the organisation type (R4_orgtype), the sender at the name.
        await run_script_steps(
            bot,
            victim,
            [
                ("text", "Marie Curie"),
                ("text", "marie@example.org"),
                ("text", "Ministère de l'Environnement"),
            ],
        )
        victim_buttons = [b["callback_data"] for b in victim.last_message.buttons]
        assert "R4_orgtype|NGO" in victim_buttons
        stale = tr.t("ru", "error_stale")
        choice_error, no_options = tr.t("ru", "error_choice", text="§", count=0).split("§")
        required = tr.t("ru", "error_required")  # a forged SKIP on a required question
        empty = tr.t("ru", "error_multi_empty")  # a forged Done with nothing chosen
        typed = tr.t("ru", "error_empty")  # a press for a question answered by typing
        replies: dict[str, int] = {}

        def note(new: list[ChatMessage]) -> None:
            first = new[0].text or ""
            # A question without buttons is no list "from 1 to 0" (found by this test).
            assert not first.endswith(no_options), first
            kind = {stale: "stale", required: "required", empty: "empty", typed: "typed"}.get(
                first
            ) or ("bad_choice" if first.startswith(choice_error) else first)
            replies[kind] = replies.get(kind, 0) + 1

        # 1. The other user's buttons, on the sender's own latest message.
        for data in victim_buttons:
            note(await press_forged(bot, sender, victim, data))
        # 2. Ours in shape, never valid here: other slots, a submit, an amend, a language
        #    switch nobody asked for, slotless data, the awaited slot with an option code.
        crafted = [
            "review|SUBMIT",
            "done|AMEND",
            "language|en",
            "language|de",
            "|NGO",
            "|R1_name",
            "R1_name|",
            "R1_name|NGO",
            "R1_name|SKIP",
            "R1_name|DONE",
            "A3_role@0|DONE",
            "A3_role@99|FUNDING",
            "R1_name|<b>x</b>&amp;",
            "R1_name|" + "Z" * 56,
            "#" + "A" * 63,
            "é" * 32,
            "x" * 64,
            "R1_name|\u0000\u202e",
            "",
            " ",
            "|",
            "#",
            "R1_name|R1_name|NGO",
        ]
        assert all(len(d.encode()) <= 64 for d in crafted)
        for data in crafted:
            note(await press_forged(bot, sender, victim, data))
        # 3. Random bytes, and data Telegram would never deliver (too long, missing).
        rng = random.Random(SEED)
        for _ in range(RANDOM_PRESSES):
            note(await press_forged(bot, sender, victim, random_data(rng)))
        note(await press_forged(bot, sender, victim, "R1_name|" + "Q" * 1000))
        note(await press_forged(bot, sender, victim, None, drop_data=True))
        # Stale buttons of the sender's own earlier question: the language menu.
        for lang in LANGUAGES:
            note(await press_forged(bot, sender, victim, f"language|{lang}", menus[sender.id]))

        # The sender goes on to a choice question; forge presses on its own buttons.
        await run_script_steps(
            bot,
            sender,
            [
                ("text", "Иван Петров"),
                ("text", "ivan@example.ru"),
                ("text", "Министерство природы"),
            ],
        )
        question = sender.last_message
        assert question.button("R4_orgtype|NGO") is not None
        for data in [
            "R4_orgtype|BOGUS",
            "R4_orgtype|ngo_",
            "R4_orgtype|DONE",
            "R4_orgtype|SKIP",
            "R4_orgtype|" + "N" * 53,
            "R4_orgtype@0|NGO",
            "R4_orgtype |NGO",
            "r4_orgtype|NGO",
            "R5_country|ke",
            "R7_|YES",
        ]:
            note(await press_forged(bot, sender, victim, data, question))
        # A real press still works after all this, and records exactly the option pressed.
        await bot.step(lambda: press_code(sender, "NGO"))
        after = await draft_of(bot, sender.id)
        assert after["answers"].get("R4_orgtype") == "NGO"
        assert ("R4_orgtype", "'NGO'") in {(r[1], r[3]) for r in after["rows"]}
        # ... and its button, pressed again later with another option, changes nothing.
        await bot.step(lambda: sender.send_text("Россия"))
        for data in ("R4_orgtype|UN_BODY", "R4_orgtype|PARTY_GOV", "R4_orgtype|NGO"):
            note(await press_forged(bot, sender, victim, data, question))
        assert (await draft_of(bot, sender.id))["answers"]["R4_orgtype"] == "NGO"

        # A multi-choice question (toggles and Done): forged toggles, Done with nothing
        # chosen, another repeat's buttons.
        await run_script_steps(
            bot,
            sender,
            [("choice", "YES"), ("text", "Семинар по оценке рисков"), ("choice", "PROJECT")],
        )
        toggles = sender.last_message
        assert toggles.button("A3_role@0|FUNDING") is not None
        for data in [
            "A3_role@0|DONE",
            "A3_role@0|NGO",
            "A3_role@0|PROJECT",
            "A3_role@1|FUNDING",
            "A3_role|FUNDING",
            "A3_role@0|" + "F" * 54,
            "A3_role@0|FUNDING|FUNDING",
            "A3_role@-1|FUNDING",
        ]:
            note(await press_forged(bot, sender, victim, data, toggles))
        await bot.step(lambda: press_code(sender, "FUNDING"))
        assert (await draft_of(bot, sender.id))["pending"] == ["FUNDING"]

        # The victim goes on undisturbed: her buttons still work.
        await bot.step(lambda: press_code(victim, "PARTY_GOV"))
        assert (await draft_of(bot, victim.id))["answers"]["R4_orgtype"] == "PARTY_GOV"
        # Every forged press got one of five polite notes in Russian, never an error.
        assert set(replies) <= {"stale", "bad_choice", "required", "empty", "typed"}, replies
        stale_events = [e for e in await bot.rows(events) if e.type == "stale"]
        assert len(stale_events) == replies["stale"]
        total = sum(replies.values())
        print(f"forged presses: {total} ({replies})")
        assert total >= 100


def test_a_choice_for_a_typed_question_asks_for_the_typed_answer(tmp_path) -> None:
    """The same engine path from the console (`capbot chat --json`, {"choice": ...} at a
    question answered by typing): "Please type an answer", nothing recorded."""
    _, _, tr = load_content(load_settings())
    env = {**os.environ, "CAPBOT_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/c.db"}
    lines = ['{"choice": "en"}', '{"choice": "NGO"}', '{"choice": "R1_name"}', "Ada Lovelace"]
    done = subprocess.run(
        [sys.executable, "-m", "bot", "chat", "--json", "--user", "c1"],
        input="\n".join(lines) + "\n",
        text=True,
        capture_output=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    out = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    texts = [o.get("text") for o in out]
    assert texts.count(tr.t("en", "error_empty")) == 2, texts
    assert not any("from 1 to 0" in (t or "") for t in texts)
    awaiting = [o["awaiting"] for o in out if "awaiting" in o]
    # (the first is the greeting's, before any input)
    assert awaiting[1:] == ["R1_name", "R1_name", "R1_name", "R2_email"], awaiting
