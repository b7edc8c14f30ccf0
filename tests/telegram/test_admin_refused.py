"""Admin commands are refused to everyone but CAPBOT_TELEGRAM_ADMINS (issue 13, abuse).

The Secretariat's commands on Telegram are /export and /stats (handlers/telegram/admin.py).
Every way a non-admin could reach them — spellings, a bot mention, options, an edit, a
caption, a hand-made button, a group chat (even the admin's own: the export would be
shown to the whole group) — gets no document and no figure, only a polite answer, and is
kept in the inbound log. The admin's own /export and /stats still work.
"""

from __future__ import annotations

import pytest

from storage.models import inbound_messages
from tests.telegram.harness import ADMIN, Running, press_code, running

pytestmark = pytest.mark.filterwarnings("ignore:.*retry_after:DeprecationWarning")

BOT = "capbot_test_bot"
REFUSED = [  # reach AdminCommands, which refuses them
    "/export",
    "/export all",
    "/EXPORT all fr split",
    f"/export@{BOT} all",
    f"/Export@{BOT.upper()} status=all --lang fr",
    "/stats",
    "/STATS",
    f"/stats@{BOT}",
    "/stats all",
]
UNKNOWN = ["/admin", "/exports", "/export_all", "/statistics", "/secretariat", "/dump"]


def documents(bot: Running) -> list[dict]:
    return bot.api.calls("sendDocument")


async def test_admin_commands_are_refused_to_everyone_else(make_app, sqlite_url, api) -> None:
    async with running(make_app, sqlite_url, api) as bot:
        tr = bot.app.translations
        # Someone's draft that an export would show.
        victim = api.user(7401, "Marie", language_code="fr")
        await bot.step(lambda: victim.send_command("/start"))
        await bot.step(lambda: press_code(victim, "fr"))
        await bot.step(lambda: victim.send_text("Marie Curie-Sklodowska"))
        # The admin's /stats: what a refusal must never show.
        admin = api.user(ADMIN, "Secretariat", language_code="en")
        await bot.step(lambda: admin.send_command("/stats"))
        stats_text = admin.last_message.text or ""
        assert admin.last_message.data["entities"][0]["type"] == "pre"
        secret_lines = [line for line in stats_text.splitlines() if len(line.strip()) > 12]
        assert secret_lines

        user = api.user(7402, "Pablo", language_code="es")
        await bot.step(lambda: user.send_command("/start"))
        await bot.step(lambda: press_code(user, "es"))
        admin_only = tr.t("es", "telegram.admin_only")
        for text in REFUSED:
            await bot.step(lambda text=text: user.send_text(text))
            assert user.last_message.text == admin_only, text
        for text in UNKNOWN:  # no such command: the engine's polite note, then the question
            await bot.step(lambda text=text: user.send_text(text))
            assert user.messages[-2].text == tr.t(
                "es", "error_unknown_command", command=text.split("@")[0]
            ), text
        # An edit to a command, a caption, hand-made buttons: none reaches AdminCommands.
        await bot.step(lambda: user.send_text("Pablo"))
        await bot.step(lambda: user.edit_last_text("/export all"))
        assert user.last_message.text == tr.t("es", "telegram.edited_ignored")
        await bot.step(lambda: user.send_photo(caption="/export all"))
        for data in ("export", "|export", "admin|export", "stats|stats", "export|all"):
            message = user.last_message
            query = {
                "id": api.open_callback_query(user),
                "from": user.user_json,
                "message": message.data,
                "chat_instance": "1",
                "data": data,
            }
            await bot.step(lambda query=query: api.enqueue_update({"callback_query": query}))
            assert user.messages[-2].text == tr.t("es", "error_stale"), data
        # A group chat, the admin's included: refused, nothing shown to the group.
        group = api.group(-1007401, "Focal points", members=(user, admin))
        for sender in (user, admin):
            for text in (f"/export@{BOT} all", f"/stats@{BOT}", "/export all"):
                await bot.step(lambda s=sender, t=text: group.send_text(t, sender=s))
        refusal = tr.t("en", "telegram.group_refused", bot=f"@{BOT}")
        assert group.messages and all(
            m.text
            in (tr.t(lang, "telegram.group_refused", bot=f"@{BOT}") for lang in tr.languages)
            for m in group.messages
        ), [m.text for m in group.messages]
        assert refusal  # the group got the explanation, in a language of the six

        # Nothing privileged went to anyone but the admin.
        assert documents(bot) == []
        for chat in (user, group, victim):
            for message in chat.messages:
                text = message.text or ""
                assert message.document is None
                assert not any(line in text for line in secret_lines), text
                if chat is not victim:
                    assert "Marie Curie" not in text
        logged = [r for r in await bot.rows(inbound_messages) if r.kind == "command"]
        assert {r.channel_user_id: r.status for r in logged} == {
            str(ADMIN): "processed",
            str(user.id): "rejected",
        }
        assert sum(r.channel_user_id == str(user.id) for r in logged) == len(REFUSED)

        # The admin's own /export still works (the test could fail the other way too).
        await bot.step(lambda: admin.send_command("/export", "all"))
        (document,) = documents(bot)
        assert str(document["chat_id"]) == str(ADMIN)
        print(
            f"refused: {len(REFUSED)} admin commands, {len(UNKNOWN)} look-alikes, 1 edit, "
            f"1 caption, 5 buttons, 6 in a group; documents to non-admins: 0"
        )
