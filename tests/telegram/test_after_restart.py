"""What a restarted process (or another replica) knows without the first one's memory: a reply
it sends tidies the chat the same way (what the turn did travels in the outbox payload), and a
notice speaks the conversation's language (stored with the respondent)."""

from __future__ import annotations

import asyncio
from typing import Any

from storage.models import outbox
from testkit.fake_bot_api import ChatMessage, SimulatedUser
from tests.telegram.harness import act, press_code, running

FAILING = {"sendMessage", "editMessageText", "editMessageReplyMarkup"}


def by_id(user: SimulatedUser, sent: ChatMessage) -> ChatMessage:
    """The message as the chat shows it now (edits included)."""
    (message,) = [m for m in user.messages if m.message_id == sent.message_id]
    return message


async def test_pending_reply_sent_after_a_restart_tidies_the_pressed_question(
        make_app, sqlite_url, api, monkeypatch) -> None:
    from telegram.error import NetworkError

    from handlers.telegram.request import AiohttpRequest

    real = AiohttpRequest.do_request
    down = {"on": False}
    tried = asyncio.Event()  # a reply of the press was committed and could not be sent

    async def flaky(self, url: str, *args: Any, **kwargs: Any) -> tuple[int, bytes]:
        if down["on"] and url.rsplit("/", 1)[-1] in FAILING:
            tried.set()
            raise NetworkError("connection reset by peer")
        return await real(self, url, *args, **kwargs)

    monkeypatch.setattr(AiohttpRequest, "do_request", flaky)
    steps = [("choice", "en"), ("text", "Marie Curie"), ("text", "focal@example.org"),
             ("text", "Ministry of Environment")]
    control, user = api.user(7001, language_code="en"), api.user(7002, language_code="en")
    async with running(make_app, sqlite_url, api) as bot:
        for person in (control, user):
            await bot.step(lambda person=person: person.send_command("/start"))
            for kind, value in steps:
                await bot.step(act(person, kind, value))
        expected, pressed = control.last_message, user.last_message  # type of organization
        await bot.step(lambda: press_code(control, "NGO"))  # tidied in the same process
        # The press is committed, but its replies cannot leave before this process stops.
        down["on"] = True
        press_code(user, "NGO")
        await asyncio.wait_for(tried.wait(), 20)
        pending = [r.payload for r in await bot.rows(outbox) if r.status == "pending"]
    await bot.app.close()
    assert pending and all(p["pressed"]["message_id"] == pressed.message_id for p in pending)
    assert pending[0]["turn"]["first"] and pending[0]["turn"]["answered"]["R4_orgtype"]

    down["on"] = False
    async with running(make_app, sqlite_url, api) as bot:  # a fresh sender, nothing in memory
        await bot.channel.wait_idle()
        pressed, expected = by_id(user, pressed), by_id(control, expected)
        assert pressed.reply_markup is None and "\n\n✔ " in pressed.text
        assert pressed.text == expected.text  # the option list gone, the answer added
        assert pressed.data.get("entities") == expected.data.get("entities")  # formatting
        assert user.last_message.text == control.last_message.text  # the next question
        assert {r.status for r in await bot.rows(outbox)} == {"sent"}



async def test_a_notice_after_a_restart_speaks_the_conversation_language(
        make_app, sqlite_url, api) -> None:
    user = api.user(7101, language_code="en")  # the app in English, the conversation French
    async with running(make_app, sqlite_url, api) as bot:
        await bot.step(lambda: user.send_command("/start"))
        await bot.step(act(user, "choice", "fr"))
        await bot.step(act(user, "text", "Marie Curie"))
    await bot.app.close()
    async with running(make_app, sqlite_url, api) as bot:  # nothing cached about the chat
        await bot.step(lambda: user.edit_last_text("Marie Sklodowska-Curie"))
        assert user.last_message.text == bot.app.translations.t("fr", "telegram.edited_ignored")
