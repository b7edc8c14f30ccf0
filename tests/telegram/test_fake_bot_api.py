"""Drive the real PTB stack (Application, Updater, transports) against FakeBotApi."""

from __future__ import annotations

import asyncio
import hashlib
import socket
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
from telegram import InlineKeyboardButton, InlineKeyboardMarkup, Update
from telegram.error import BadRequest, Conflict, Forbidden, NetworkError, RetryAfter, TimedOut
from telegram.ext import (
    AIORateLimiter,
    Application,
    CallbackQueryHandler,
    CommandHandler,
    ContextTypes,
    MessageHandler,
    filters,
)

from handlers.telegram.request import AiohttpRequest
from testkit.fake_bot_api import SECRET_HEADER, FakeBotApi, parse_html, polling

UPLOAD_NAME = "Отчёт 2025.csv"  # non-ASCII on purpose: multipart file names must survive
UPLOAD_BYTES = b"country,score\nKE,3\n"
# PTB 22's RetryAfter reads its own deprecated int `retry_after` while being built, so every
# 429 warns unless PTB_TIMEDELTA=1 is set.
quiet_retry_after = pytest.mark.filterwarnings("ignore:.*retry_after:DeprecationWarning")


# --- a small bot exercising the features the questionnaire bot needs ---------------------------


async def _echo(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    await update.effective_message.reply_text(update.effective_message.text)


async def _whoami(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    user = update.effective_user
    payload = " ".join(context.args or [])
    await update.effective_message.reply_text(f"{user.first_name}:{user.language_code}:{payload}")


async def _menu(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    buttons = [InlineKeyboardButton(t, callback_data=f"answer:{t.lower()}") for t in ("Yes", "No")]
    markup = InlineKeyboardMarkup([buttons])
    await update.effective_message.reply_text("Continue?", reply_markup=markup)


async def _on_button(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    query = update.callback_query
    choice = query.data.split(":", 1)[1]
    await query.answer(f"Saved {choice}")
    await query.edit_message_text(f"You chose {choice}")


async def _send_report(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    await update.effective_message.reply_document(
        UPLOAD_BYTES, filename=UPLOAD_NAME, caption="Your report"
    )


async def _receive_document(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    document = update.effective_message.document
    data = await (await document.get_file()).download_as_bytearray()
    digest = hashlib.sha256(data).hexdigest()[:12]
    await update.effective_message.reply_text(f"{document.file_name} {len(data)} {digest}")


async def _on_media(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    message = update.effective_message
    kind = next(k for k in ("photo", "sticker", "voice", "location") if getattr(message, k))
    await message.reply_text(f"got {kind}")


async def _on_edit(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    await update.edited_message.reply_text(f"edited: {update.edited_message.text}")


def build_app(api: FakeBotApi, *, transport: str = "aiohttp", rate_limiter=None) -> Application:
    builder = api.application_builder()
    if transport == "aiohttp":
        builder = builder.request(AiohttpRequest()).get_updates_request(AiohttpRequest())
    if rate_limiter is not None:
        builder = builder.rate_limiter(rate_limiter)
    app = builder.build()
    app.add_handler(MessageHandler(filters.UpdateType.EDITED_MESSAGE, _on_edit))
    app.add_handler(CommandHandler("menu", _menu))
    app.add_handler(CommandHandler("report", _send_report))
    app.add_handler(CommandHandler(["start", "whoami"], _whoami))
    app.add_handler(CallbackQueryHandler(_on_button, pattern=r"^answer:"))
    app.add_handler(MessageHandler(filters.Document.ALL, _receive_document))
    media = filters.PHOTO | filters.Sticker.ALL | filters.VOICE | filters.LOCATION
    app.add_handler(MessageHandler(media, _on_media))
    app.add_handler(MessageHandler(filters.TEXT & ~filters.COMMAND, _echo))
    return app


@pytest.fixture
async def api() -> AsyncIterator[FakeBotApi]:
    async with FakeBotApi() as fake:
        yield fake


@pytest.fixture
async def app(api: FakeBotApi) -> AsyncIterator[Application]:
    async with polling(build_app(api), timeout=10) as running:
        yield running


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- round trips through polling ---------------------------------------------------------------


async def test_text_round_trip_and_offsets(api: FakeBotApi, app: Application) -> None:
    ann = api.user(101, "Ann", language_code="fr")
    bob = api.user(102, "Bob")
    ann.send_text("bonjour")
    bob.send_text("hello")
    assert (await ann.next_message()).text == "bonjour"
    assert (await bob.next_message()).text == "hello"
    ann.send_command("/start", payload="ref42")
    reply = await ann.next_message()
    assert reply.text == "Ann:fr:ref42"
    assert reply.data["chat"]["id"] == 101 and reply.data["from"]["is_bot"] is True
    assert [m.message_id for m in ann.messages] == [2, 4]  # shares ids with the user's messages
    # PTB confirms what it fetched (offset), so nothing stays pending.
    await api.wait_for(lambda: not api.pending_updates)
    assert len(bob.messages) == 1


async def test_button_press_answer_and_edit(api: FakeBotApi, app: Application) -> None:
    user = api.user(201)
    user.send_command("/menu")
    menu = await user.next_message()
    assert menu.button_texts == ["Yes", "No"]
    query_id = user.press("No")
    answer = await user.wait_for_callback_answer(query_id)
    assert answer["text"] == "Saved no"
    await user.wait_for(lambda: menu.text == "You chose no")
    assert menu.reply_markup is None  # an edit without reply_markup drops the keyboard
    assert menu.data["edit_date"] >= menu.data["date"]
    with pytest.raises(LookupError):
        user.press("No")  # no message carries the button any more
    with pytest.raises(BadRequest, match=r"(?i)message is not modified"):
        await app.bot.edit_message_text(
            "You chose no", chat_id=user.id, message_id=menu.message_id
        )


async def test_document_both_ways(api: FakeBotApi, app: Application) -> None:
    user = api.user(301)
    user.send_command("/report")
    report = await user.next_message()
    assert report.document["file_name"] == UPLOAD_NAME
    assert report.text == "Your report"
    assert api.file_bytes(report.document["file_id"]) == UPLOAD_BYTES
    (upload,) = [r for r in api.requests if r.method == "sendDocument"]
    assert upload.files["document"].data == UPLOAD_BYTES  # a multipart upload

    spreadsheet = b"PK\x03\x04 spreadsheet"
    user.send_document("answers.xlsx", spreadsheet)
    reply = await user.next_message()
    digest = hashlib.sha256(spreadsheet).hexdigest()[:12]
    # The bot fetched it with getFile and a download under base_file_url.
    assert reply.text == f"answers.xlsx {len(spreadsheet)} {digest}"


async def test_media_and_edited_messages_reach_handlers(api: FakeBotApi, app: Application) -> None:
    user = api.user(401)
    for send in (user.send_photo, user.send_sticker, user.send_voice, user.send_location):
        send()
        assert (await user.next_message()).text.startswith("got ")
    user.send_text("first draft")
    assert (await user.next_message()).text == "first draft"
    user.edit_last_text("final answer")
    assert (await user.next_message()).text == "edited: final answer"


async def test_group_chat(api: FakeBotApi, app: Application) -> None:
    ann, bob = api.user(501, "Ann"), api.user(502, "Bob", language_code="de")
    group = api.group(-1001234, "Biosafety focal points", members=(ann, bob))
    group.send_command("/whoami", sender=bob)
    reply = await group.next_message()
    assert reply.text == "Bob:de:"
    assert reply.data["chat"] == {
        "id": -1001234,
        "type": "supergroup",
        "title": group.chat["title"],
    }
    assert not bob.messages  # nothing went to Bob's private chat


async def test_bot_side_calls_are_recorded(api: FakeBotApi, app: Application) -> None:
    user = api.user(601)
    bot = app.bot
    await bot.send_chat_action(user.id, "typing")
    sent = await bot.send_message(user.id, "<b>Hi</b> &amp; <i>welcome</i> 👋", parse_mode="HTML")
    assert sent.text == "Hi & welcome 👋"
    assert [(e.type, e.offset, e.length) for e in sent.entities] == [
        ("bold", 0, 2),
        ("italic", 5, 7),
    ]
    await bot.delete_message(user.id, sent.message_id)
    assert user.chat_actions == ["typing"] and user.messages == []
    assert api.calls("sendMessage")[-1]["parse_mode"] == "HTML"
    assert api.calls("sendMessage")[-1]["chat_id"] == user.id  # form values decoded to JSON


# --- Telegram's validation and errors surface as PTB exceptions ---------------------------------


async def test_text_limits(api: FakeBotApi, app: Application) -> None:
    chat_id, bot = api.user(701).id, app.bot
    await bot.send_message(chat_id, "x" * 4096)
    await bot.send_message(chat_id, "<b>" + "x" * 4096 + "</b>", parse_mode="HTML")
    with pytest.raises(BadRequest, match=r"(?i)message is too long"):
        await bot.send_message(chat_id, "x" * 4097)
    with pytest.raises(BadRequest, match=r"(?i)can't parse entities"):
        await bot.send_message(chat_id, "<b>unclosed", parse_mode="HTML")
    with pytest.raises(BadRequest, match=r"(?i)text is empty"):
        await bot.send_message(chat_id, "<b></b>", parse_mode="HTML")
    with pytest.raises(BadRequest, match=r"(?i)chat not found"):
        await bot.send_message(999, "nobody")


@pytest.mark.parametrize("data", ["a" * 65, "é" * 33])  # 65 and 66 bytes
async def test_callback_data_over_64_bytes_rejected(
    api: FakeBotApi, app: Application, data: str
) -> None:
    chat_id = api.user(801).id
    ok = InlineKeyboardMarkup([[InlineKeyboardButton("ok", callback_data="a" * 64)]])
    await app.bot.send_message(chat_id, "fits", reply_markup=ok)
    too_long = InlineKeyboardMarkup([[InlineKeyboardButton("no", callback_data=data)]])
    with pytest.raises(BadRequest, match=r"(?i)button_data_invalid"):
        await app.bot.send_message(chat_id, "too long", reply_markup=too_long)


@quiet_retry_after
async def test_forced_429_and_flood_limit_raise_retry_after(
    api: FakeBotApi, app: Application
) -> None:
    chat_id = api.user(901).id
    api.force_429(1, retry_after=7)
    # str() rather than .retry_after: reading that property warns (int -> timedelta in PTB 22.2+)
    with pytest.raises(RetryAfter, match="Retry in 7 seconds"):
        await app.bot.send_message(chat_id, "now")
    await app.bot.send_message(chat_id, "later")  # only one forced answer
    api.set_flood_limit(per_chat_per_second=1)
    await app.bot.send_message(chat_id, "first")
    with pytest.raises(RetryAfter, match="Retry in 1 seconds"):
        await app.bot.send_message(chat_id, "second within a second")
    assert api.requests[-1].status == 429


@quiet_retry_after
async def test_rate_limiter_retries_after_429(api: FakeBotApi) -> None:
    chat_id = api.user(902).id
    api.force_429(1, retry_after=1)
    app = build_app(api, rate_limiter=AIORateLimiter(max_retries=1))
    async with app:
        started = time.monotonic()
        await app.bot.send_message(chat_id, "eventually")
    assert time.monotonic() - started >= 1
    assert [m.text for m in api.chat(chat_id).messages] == ["eventually"]


async def test_blocked_user_raises_forbidden(api: FakeBotApi, app: Application) -> None:
    user = api.user(1001)
    api.block_user(user.id)
    with pytest.raises(Forbidden, match=r"(?i)bot was blocked by the user"):
        await app.bot.send_message(user.id, "are you there?")


async def test_set_my_commands_per_language(api: FakeBotApi, app: Application) -> None:
    await app.bot.set_my_commands([("start", "Start the questionnaire")])
    await app.bot.set_my_commands([("start", "Commencer le questionnaire")], language_code="fr")
    assert api.my_commands() == [{"command": "start", "description": "Start the questionnaire"}]
    french = await app.bot.get_my_commands(language_code="fr")
    assert [(c.command, c.description) for c in french] == [
        ("start", "Commencer le questionnaire")
    ]
    assert api.my_commands("de") == []
    with pytest.raises(BadRequest):
        await app.bot.set_my_commands([("Start!", "bad name")])


# --- webhook mode ------------------------------------------------------------------------------


async def test_webhook_delivery_and_secret_check(api: FakeBotApi) -> None:
    port = _free_port()
    url = f"http://127.0.0.1:{port}/tg-hook"
    app = build_app(api)
    async with app:
        await app.start()
        await app.updater.start_webhook(
            listen="127.0.0.1",
            port=port,
            url_path="tg-hook",
            webhook_url=url,
            secret_token="s3cret",
        )
        try:
            assert api.webhook["url"] == url and api.webhook["secret_token"] == "s3cret"
            user = api.user(1101)
            user.send_text("via webhook")
            assert (await user.next_message()).text == "via webhook"
            async with aiohttp.ClientSession() as session:
                for headers in ({SECRET_HEADER: "wrong"}, {}):
                    body = {"update_id": 999, "message": {}}
                    async with session.post(url, json=body, headers=headers) as response:
                        assert response.status == 403
            with pytest.raises(Conflict, match="webhook is active"):
                await app.bot.get_updates()
            info = await app.bot.get_webhook_info()
            assert info.url == url and info.pending_update_count == 0
        finally:
            await app.updater.stop()
            await app.stop()


async def test_failed_webhook_delivery_is_bounded() -> None:
    async with FakeBotApi(webhook_retries=2, webhook_retry_delay=0.01) as api:
        app = build_app(api)
        async with app:
            await app.bot.set_webhook(f"http://127.0.0.1:{_free_port()}/nobody-listens")
            api.user(1201).send_text("lost")
            await api.wait_for(lambda: len(api.webhook_errors) == 3)
            await api.wait_for(lambda: not api.pending_updates)  # dropped after the retries
            info = await app.bot.get_webhook_info()
            assert "Connection failed" in info.last_error_message
            await app.bot.delete_webhook()
            api.user(1201).send_text("kept")
            assert [u["message"]["text"] for u in await _raw_get_updates(api)] == ["kept"]


# --- the fake's HTTP surface, and teardown -----------------------------------------------------


async def _raw_get_updates(api: FakeBotApi, **params: object) -> list[dict]:
    async with aiohttp.ClientSession() as session:
        url = f"{api.base_url}{api.token}/getUpdates"
        async with session.post(url, json=params) as response:  # JSON bodies work too
            return (await response.json())["result"]


async def test_get_updates_long_polling(api: FakeBotApi) -> None:
    user = api.user(1301)
    assert await _raw_get_updates(api, timeout=0) == []
    poll = asyncio.create_task(_raw_get_updates(api, timeout=10))
    await asyncio.sleep(0.05)
    started = time.monotonic()
    user.send_text("one")
    (first,) = await poll
    assert time.monotonic() - started < 1  # answered on arrival, not at the timeout
    user.send_text("two")
    assert len(await _raw_get_updates(api)) == 2  # unconfirmed updates come again
    assert len(await _raw_get_updates(api, limit=1)) == 1
    second = await _raw_get_updates(api, offset=first["update_id"] + 1)
    assert [u["message"]["text"] for u in second] == ["two"]
    assert await _raw_get_updates(api, offset=second[0]["update_id"] + 1) == []

    older = asyncio.create_task(_raw_get_updates_status(api, timeout=10))
    await asyncio.sleep(0.05)
    await _raw_get_updates(api, timeout=0)
    assert await older == 409  # a newer getUpdates ends the older one, as in Telegram


async def _raw_get_updates_status(api: FakeBotApi, **params: object) -> int:
    async with aiohttp.ClientSession() as session:
        url = f"{api.base_url}{api.token}/getUpdates"
        async with session.post(url, data={k: str(v) for k, v in params.items()}) as response:
            return response.status


async def test_teardown_does_not_wait_out_long_polls() -> None:
    api = FakeBotApi()
    await api.start()
    started = time.monotonic()
    async with polling(build_app(api), timeout=30):
        await asyncio.sleep(0.1)  # the Updater is now inside a 30 s long poll
    raw_poll = asyncio.create_task(_raw_get_updates(api, timeout=30))
    await asyncio.sleep(0.05)
    await api.stop()
    assert await raw_poll == []
    assert time.monotonic() - started < 2


async def test_default_httpx_transport(api: FakeBotApi) -> None:
    async with polling(build_app(api, transport="httpx"), timeout=10):
        user = api.user(1401, "Zoe", language_code="es")
        user.send_text("hola")
        assert (await user.next_message()).text == "hola"
        user.send_command("/report")
        report = await user.next_message()
        assert api.file_bytes(report.document["file_id"]) == UPLOAD_BYTES
        assert report.document["file_name"] == UPLOAD_NAME
        user.send_document("notes.txt", b"abc")
        assert (await user.next_message()).text.startswith("notes.txt 3 ")


# --- AiohttpRequest on its own -----------------------------------------------------------------


async def test_aiohttp_request_maps_errors(api: FakeBotApi) -> None:
    request = AiohttpRequest(read_timeout=0.2)
    with pytest.raises(RuntimeError, match="not initialized"):
        await request.do_request(f"{api.base_url}{api.token}/getMe", "POST")
    async with request:
        with pytest.raises(TimedOut):  # a 5 s long poll outlasts the 0.2 s read timeout
            await request.post(f"{api.base_url}{api.token}/getUpdates?timeout=5")
        assert request.read_timeout == 0.2
        with pytest.raises(NetworkError):
            await request.post(f"http://127.0.0.1:{_free_port()}/botX/getMe")
        assert (await request.post(f"{api.base_url}{api.token}/getMe"))["is_bot"] is True


def test_parse_html_entities_and_errors() -> None:
    text, entities = parse_html(
        '👍 <a href="https://x.org">link</a> &lt;3 <tg-spoiler>s</tg-spoiler>'
    )
    assert text == "👍 link <3 s"
    assert entities == [
        {"type": "text_link", "url": "https://x.org", "offset": 3, "length": 4},  # UTF-16
        {"type": "spoiler", "offset": 11, "length": 1},
    ]
    for bad, error in [
        ("<b>x</i>", "Unmatched end tag"),
        ("<blink>x</blink>", "Unsupported start tag"),
        ("a < b", "Unclosed start tag"),
        ("x</b>", "Unexpected end tag"),
    ]:
        with pytest.raises(ValueError, match=error):
            parse_html(bad)
