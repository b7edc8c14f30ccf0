"""Crash probe: SIGKILL a real `capbot serve` under load, restart it, count updates never stored.

Simulated users keep writing to the bot (FakeBotApi on loopback, in this process) while a
`capbot serve` subprocess is killed with SIGKILL and started again, `kills` times; a last run
then works off the backlog. An update counts as processed when the inbound log has a row for it
(`<bot id>:<update id>`, whatever its status). Every update Telegram handed out and the bot
then confirmed without storing is lost for good: Telegram never delivers it again.

Kill moments (`mode`):
- "random": after a random uptime, as an operator's `kill -9` or the OOM killer would;
- "confirm": the instant a getUpdates offset confirms updates (inside the fake's handler,
  before it answers), the moment a bot that confirms before committing is exposed.

Used by tests/telegram/test_crash.py (few kills) and benchmarks/telegram_kills.py (figures).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import sqlite3
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from testkit.fake_bot_api import FakeBotApi, SimulatedUser

REPO_ROOT = Path(__file__).resolve().parents[1]
Mode = Literal["random", "confirm"]
TEXTS = ("Maria Lopez", "maria@example.org", "Ministry of Environment", "Kenya", "/help",
         "Workshop on risk assessment", "25", "/review", "/back", "hello")


@dataclass
class ProbeResult:
    kills: int
    sent: int
    processed: int
    missing: list[int] = field(default_factory=list)  # confirmed to Telegram, never stored
    undelivered: list[int] = field(default_factory=list)  # Telegram still holds them (slow)
    silent_users: list[int] = field(default_factory=list)  # users the bot never answered
    seconds: float = 0.0

    def summary(self) -> str:
        return (f"{self.kills} kills: {self.sent} updates sent, {self.processed} stored, "
                f"{len(self.missing)} never processed {self.missing[:10]}, "
                f"{len(self.undelivered)} still held by Telegram at the end, "
                f"{len(self.silent_users)} users without any reply, {self.seconds:.1f}s")


class Load:
    """Users acting at `rate` updates/s in all: mostly text, some button presses."""

    def __init__(self, api: FakeBotApi, users: int, rate: float, seed: int = 1) -> None:
        self.users = [api.user(700_000 + n, language_code="en") for n in range(users)]
        self.rate = rate
        self.random = random.Random(seed)
        self._task: asyncio.Task | None = None

    def act(self, user: SimulatedUser) -> None:
        roll = self.random.random()
        if not user.messages or roll < 0.05:
            user.send_command("/start")
            return
        last = user.messages[-1]
        data = [b["callback_data"] for b in last.buttons if "callback_data" in b]
        if data and roll < 0.35:
            user.press(self.random.choice(data), last)
        else:
            user.send_text(self.random.choice(TEXTS))

    async def _run(self) -> None:
        n = 0
        while True:
            self.act(self.users[n % len(self.users)])
            n += 1
            await asyncio.sleep(1.0 / self.rate)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def stored_update_ids(db_path: Path, bot_id: int) -> set[int]:
    if not db_path.exists():
        return set()
    with contextlib.closing(sqlite3.connect(db_path, timeout=10)) as conn:
        try:
            rows = conn.execute("SELECT channel_message_id FROM inbound_messages "
                                "WHERE channel = 'telegram'").fetchall()
        except sqlite3.OperationalError:  # not migrated yet
            return set()
    prefix = f"{bot_id}:"
    return {int(r[0][len(prefix):]) for r in rows if r[0].startswith(prefix)}


class Bot:
    """`python -m bot serve` from `code_dir`, its output in `workdir`/serve-<n>.log."""

    def __init__(self, api: FakeBotApi, workdir: Path, code_dir: Path,
                 extra_env: dict[str, str] | None = None) -> None:
        self.api = api
        self.workdir = workdir
        self.db_path = workdir / "probe.db"
        self.env = {**os.environ, "PYTHONPATH": str(code_dir),
                    "CAPBOT_DATABASE_URL": f"sqlite+aiosqlite:///{self.db_path}",
                    "CAPBOT_TELEGRAM_TOKEN": api.token,
                    "CAPBOT_TELEGRAM_API_URL": api.base_url,
                    "CAPBOT_TELEGRAM_RATE_LIMIT": "false", "CAPBOT_TELEGRAM_CHAT_RATE": "0",
                    "CAPBOT_LOG_LEVEL": "WARNING", **(extra_env or {})}
        self.runs = 0
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        """Start and wait until it polls."""
        polls = len(self.api.calls("getUpdates"))
        self.runs += 1
        log = open(self.workdir / f"serve-{self.runs}.log", "wb")  # noqa: SIM115, ASYNC230
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot", "serve", cwd=self.workdir, env=self.env,
            stdout=log, stderr=log)
        log.close()
        deadline = time.monotonic() + 60
        while len(self.api.calls("getUpdates")) <= polls:
            if self.proc.returncode is not None or time.monotonic() > deadline:
                raise RuntimeError(f"capbot serve did not start (see serve-{self.runs}.log)")
            await asyncio.sleep(0.02)

    def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)

    async def wait(self) -> None:
        if self.proc is not None:
            await self.proc.wait()

    async def terminate(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 30)
            except TimeoutError:
                self.kill()
                await self.proc.wait()


async def run_probe(workdir: Path, *, kills: int = 20, mode: Mode = "random", users: int = 60,
                    rate: float = 30.0, uptime: tuple[float, float] = (0.3, 1.5),
                    code_dir: Path = REPO_ROOT, seed: int = 1,
                    extra_env: dict[str, str] | None = None) -> ProbeResult:
    started = time.monotonic()
    rng = random.Random(seed)
    async with FakeBotApi() as api:
        bot = Bot(api, workdir, code_dir, extra_env)
        load = Load(api, users, rate, seed)
        load.start()
        try:
            for _ in range(kills):
                await bot.start()
                await asyncio.sleep(rng.uniform(*uptime))
                if mode == "confirm":
                    fired = asyncio.get_running_loop().create_future()

                    def on_confirm(ids: list[int], fired: asyncio.Future = fired) -> None:
                        bot.kill()  # before the fake answers: nothing after this counts
                        if not fired.done():
                            fired.set_result(ids)

                    api.on_confirm = on_confirm
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(asyncio.shield(fired), 10)
                    api.on_confirm = None
                bot.kill()
                await bot.wait()
            await bot.start()  # the last run works off the backlog
            await asyncio.sleep(rng.uniform(*uptime))
        finally:
            await load.stop()
        bot_id = int(api.token.split(":")[0])
        sent = {u["update_id"] for u in api.update_log}
        deadline, quiet_since, last = time.monotonic() + 120, None, -1
        while time.monotonic() < deadline:
            stored = stored_update_ids(bot.db_path, bot_id)
            if sent <= stored:
                break
            # What Telegram still holds will come; confirmed but unstored never will.
            now = time.monotonic()
            if api.pending_updates or len(stored) != last:
                quiet_since, last = None, len(stored)
            elif quiet_since is None:
                quiet_since = now
            elif now - quiet_since > 3.0:
                break
            await asyncio.sleep(0.2)
        await bot.terminate()
        stored = stored_update_ids(bot.db_path, bot_id)
        held = {u["update_id"] for u in api.pending_updates}
        silent = [u.id for u in load.users if not u.messages]
        return ProbeResult(kills, len(sent), len(sent & stored), sorted(sent - stored - held),
                           sorted((sent - stored) & held), silent, time.monotonic() - started)
