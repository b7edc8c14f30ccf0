"""A Telegram respondent who goes through the whole questionnaire like a person, for fault tests.

It sends its next message once the bot has taken the last one (a getUpdates offset confirmed it,
or the webhook answered 2xx), and presses a button once the question carrying it is there. So
it keeps going through restarts, kills and outages of the bot, only slower; it fails with what
it was waiting for when nothing comes within `wait` seconds.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter

from testkit.conversation import FULL_RUN_EN
from testkit.fake_bot_api import ChatMessage, FakeBotApi, SimulatedUser


def _slot(data: str) -> str:
    return data.rsplit("|", 1)[0]


class Respondent:
    """One user through FULL_RUN_EN (after the language menu): `await Respondent(...).run()`."""

    def __init__(
        self,
        api: FakeBotApi,
        user: SimulatedUser,
        *,
        wait: float = 60.0,
        script: list[tuple[str, str]] = FULL_RUN_EN,
        think: float = 0.0,
        seed: int = 0,
    ) -> None:
        self.api, self.user, self.wait, self.script = api, user, wait, script
        self.think, self.pace = think, random.Random(seed)  # a pause of 0-2×think per answer
        self.last_update = 0
        self.pressed = ("", False)  # (slot, a toggle of a multi-choice question)
        self.step: tuple[str, str] = ("start", "/start")
        self.mark = 0  # bot messages seen before the last send
        self.sent: list[int] = []  # update ids of everything this respondent sent

    def _acknowledged(self) -> bool:
        return self.api.acknowledged(self.last_update)

    def _button(self, code: str) -> tuple[ChatMessage, str] | None:
        """(message, callback data) of `code` on a question received since the last send
        (newest first: a reply held up by a crash may come late), or on the question the last
        press only toggled."""
        slot, toggled = self.pressed
        messages = self.user.messages
        candidates = [m for m in messages[self.mark :] if m.buttons]
        if toggled:
            candidates += [
                m
                for m in messages
                if m.buttons and _slot(m.buttons[0].get("callback_data", "")) == slot
            ]
        for message in reversed(candidates):
            data = next(
                (
                    b["callback_data"]
                    for b in message.buttons
                    if b.get("callback_data", "").endswith(f"|{code}")
                ),
                None,
            )
            if data is not None and (_slot(data) != slot or toggled):
                return message, data
        return None

    def _sent(self) -> None:
        self.last_update = self.api.update_log[-1]["update_id"]
        self.sent.append(self.last_update)

    async def _send(self, kind: str, value: str) -> None:
        self.step = (kind, value)
        if self.think:
            await asyncio.sleep(self.pace.uniform(0, 2 * self.think))
        await self.api.wait_for(self._acknowledged, self.wait)
        if kind == "choice":
            message, data = await self.api.wait_for(lambda: self._button(value), self.wait)
            self.user.press(data, message)
            multi = any(b.get("callback_data", "").endswith("|DONE") for b in message.buttons)
            self.pressed = (_slot(data), multi and value != "DONE")
        elif value.startswith("/"):
            self.user.send_command(value)
        else:
            self.user.send_text(value)
        self.mark = len(self.user.messages)
        self._sent()

    async def run(self) -> None:
        try:
            self.user.send_command("start")
            self._sent()
            # A first contact gets the language menu, pre-selected from the profile.
            await self.api.wait_for(lambda: self._button("en"), self.wait)
            await self._send("choice", "en")
            for kind, value in self.script:
                await self._send(kind, value)
            self.step = ("end", "")
            await self.api.wait_for(self._acknowledged, self.wait)
        except TimeoutError:
            seen = [
                (m.text or "")[:50] + " " + str([b.get("callback_data") for b in m.buttons][:4])
                for m in self.user.messages[-6:]
            ]
            raise AssertionError(
                f"chat {self.user.id}: stuck at {self.step} for "
                f"{self.wait:.0f} s; last bot messages: {seen}"
            ) from None


def duplicate_sends(api: FakeBotApi, users: list[SimulatedUser]) -> tuple[int, int]:
    """(usual, extra): every user ran the same script, so each chat should get the same number
    of messages (successful sendMessage calls; `usual`, the most common count); `extra` counts
    those beyond it, the duplicates. Raises AssertionError if a chat got fewer (a reply never
    delivered)."""
    sends = Counter(
        str(r.params.get("chat_id"))
        for r in api.requests
        if r.method.lower() == "sendmessage" and r.status == 200
    )
    per_user = [sends[str(u.id)] for u in users]
    usual = Counter(per_user).most_common(1)[0][0]
    short = sorted(n for n in per_user if n < usual)
    assert not short, f"chats missing replies: {short} messages, usually {usual}"
    return usual, sum(n - usual for n in per_user)
