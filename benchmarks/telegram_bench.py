"""Benchmark: simulated Telegram respondents completing the questionnaire through capbot.

Run: python -m benchmarks.telegram_bench [--users 100] [--database sqlite|URL] [--no-echo]

N respondents at once, each sending /start, confirming the language and answering every
question (buttons, multi-choice toggles, typed text) up to the receipt, through long polling
against FakeBotApi on loopback. Prints turns/s, p50/p99 latency (a user's action until the
bot's next prompt is shown, or the toggled check mark), and the bot process's CPU ms per turn;
then, in the same run, a bare python-telegram-bot echo bot with the same HTTP client
(handlers.telegram.request.AiohttpRequest) and update processor (benchmarks.telegram_echo) as
the floor.

CPU attribution: the fake Bot API and the simulated users run in a child process, so
time.process_time() here counts capbot alone: PTB, the transport, the engine, SQLite's writer
thread, the outbox.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.telegram_echo import REPO_ROOT, Endpoint, make_echo_application, run_load
from testkit.fake_bot_api import ChatMessage, FakeBotApi, SimulatedUser

SELECTED = "✅"
# One respondent's whole questionnaire with one activity: (kind, value); "toggle" presses a
# multi-choice option (the question is edited in place), "choice" any other button.
SCRIPT: list[tuple[str, str]] = [
    ("command", "/start"), ("choice", "en"),
    ("text", "Maria Lopez"), ("text", "maria@example.org"), ("text", "Ministry of Environment"),
    ("choice", "PARTY_GOV"), ("text", "KE"), ("choice", "YES"),
    ("text", "Workshop on risk assessment"), ("choice", "PROJECT"),
    ("toggle", "IMPLEMENTING"), ("toggle", "FUNDING"), ("choice", "DONE"),
    ("choice", "NATIONAL"), ("text", "KE, UG"), ("choice", "COMPLETED"),
    ("text", "2023-05"), ("text", "2023-11"), ("text", "3, 4"),
    ("toggle", "TRAINING_WORKSHOP"), ("choice", "DONE"), ("command", "/skip"),
    ("text", "25"), ("text", "2, 3"), ("text", "15000 USD"),
    ("text", "Trained 25 risk assessors."), ("command", "/skip"), ("choice", "NO"),
    ("choice", "YES"), ("choice", "YES_SOME"), ("text", "1, 3"), ("command", "/skip"),
    ("command", "/skip"), ("choice", "YES"), ("choice", "YES"), ("command", "/skip"),
    ("choice", "SUBMIT"),
]
WARM_UP_USERS = 5


# --- the fake's side (child process) -----------------------------------------------------------


def _button(user: SimulatedUser, code: str) -> tuple[ChatMessage, dict[str, Any]]:
    for message in reversed(user.messages):
        for button in message.buttons:
            if button.get("callback_data", "").endswith(f"|{code}"):
                return message, button
    raise LookupError(f"user {user.id}: no button for {code}")


def _is_prompt(message: ChatMessage) -> bool:
    """The message that ends a turn: a keyboard, a question (progress in italics), a receipt."""
    if message.reply_markup:
        return True
    entities = message.data.get("entities") or []
    if entities and entities[0]["type"] == "italic" and entities[0]["offset"] == 0:
        return True
    return "CB-" in (message.text or "")


async def _respondent(user: SimulatedUser, latencies: list[float], errors: list[str]) -> None:
    for kind, value in SCRIPT:
        started = time.perf_counter()
        try:
            if kind in ("choice", "toggle"):
                message, button = _button(user, value)
                user.press(button["callback_data"], message)
            elif kind == "command":
                user.send_command(value)
            else:
                user.send_text(value)
            if kind == "toggle":
                data = button["callback_data"]

                def ticked(message: ChatMessage = message, data: str = data) -> bool:
                    found = message.button(data)
                    return bool(found and found["text"].startswith(SELECTED))

                await user.wait_for(ticked, timeout=60)
            else:
                await user.wait_for_message(_is_prompt, timeout=60)
        except (LookupError, TimeoutError) as exc:
            errors.append(f"user {user.id} at {kind} {value}: {type(exc).__name__} {exc}")
            return
        latencies.append(time.perf_counter() - started)
    if "CB-" not in (user.last_message.text if user.last_message else ""):
        errors.append(f"user {user.id}: no receipt")


async def _converse(api: FakeBotApi, users: int, first_id: int) -> dict[str, Any]:
    latencies: list[float] = []
    errors: list[str] = []
    people = [api.user(first_id + n, f"User{n}", language_code="en") for n in range(users)]
    cpu, started = time.process_time(), time.perf_counter()
    await asyncio.gather(*(_respondent(p, latencies, errors) for p in people))
    return {"wall_s": time.perf_counter() - started, "latencies": latencies,
            "errors": errors[:5], "error_count": len(errors),
            "fake_cpu_s": time.process_time() - cpu}


async def _serve_fake() -> None:
    def reply(payload: object) -> None:
        sys.stdout.write(json.dumps(payload) + "\n")
        sys.stdout.flush()

    async with FakeBotApi() as api:
        reply([api.token, api.base_url, api.base_file_url])
        first_id = 1_000_000
        while (line := await asyncio.to_thread(sys.stdin.readline)).strip():
            command, users = json.loads(line)
            if command != "run":
                break
            reply(await _converse(api, users, first_id))
            first_id += users


# --- capbot's side (this process) --------------------------------------------------------------


async def run_capbot(users: int, database: str) -> dict[str, Any]:
    from bot.app import build_app
    from bot.config import load_settings
    from bot.server import telegram_channel

    fake = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "benchmarks.telegram_bench", "--serve-fake",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, cwd=REPO_ROOT,
        limit=2**24)  # one JSON line carries every latency
    assert fake.stdin is not None and fake.stdout is not None

    async def ask(*command: object) -> Any:
        fake.stdin.write(json.dumps(command).encode() + b"\n")
        await fake.stdin.drain()
        return json.loads(await fake.stdout.readline())

    tmp = tempfile.TemporaryDirectory(prefix="capbot-tg-bench-")
    url = (f"sqlite+aiosqlite:///{Path(tmp.name) / 'bench.db'}" if database == "sqlite"
           else database)
    try:
        endpoint = Endpoint(*json.loads(await fake.stdout.readline()))
        # Loopback: Telegram's flood limits would only slow the measurement down.
        settings = load_settings(database_url=url, telegram_token=endpoint.token,
                                 telegram_api_url=endpoint.base_url, telegram_rate_limit=False,
                                 telegram_chat_rate=0, telegram_inbound_limit=0)
        app = await build_app(settings)
        channel = telegram_channel(app, poll_timeout=10)
        await channel.start()
        try:
            warm = await ask("run", WARM_UP_USERS)
            if warm["error_count"]:
                raise AssertionError(f"warm-up failed: {warm['errors']}")
            await channel.wait_idle()
            cpu = time.process_time()
            result = await ask("run", users)
            await channel.wait_idle()
            bot_cpu = time.process_time() - cpu
        finally:
            await channel.stop()
            await app.close()
    finally:
        fake.stdin.close()
        try:
            await asyncio.wait_for(fake.wait(), 10)
        except TimeoutError:
            fake.kill()
        tmp.cleanup()
    if result["error_count"]:
        raise AssertionError(f"{result['error_count']} respondents failed: {result['errors']}")
    turns = len(result["latencies"])
    percentiles = statistics.quantiles(result["latencies"], n=100)
    return {"users": users, "turns": turns, "turns_per_s": turns / result["wall_s"],
            "p50_ms": percentiles[49] * 1000, "p99_ms": percentiles[98] * 1000,
            "bot_cpu_ms_per_turn": bot_cpu * 1000 / turns,
            "fake_cpu_ms_per_turn": result["fake_cpu_s"] * 1000 / turns,
            "wall_s": result["wall_s"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--database", default="sqlite",
                        help="'sqlite' (a temporary file) or a database URL")
    parser.add_argument("--no-echo", action="store_true", help="skip the echo-bot floor")
    parser.add_argument("--serve-fake", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_fake:
        asyncio.run(_serve_fake())
        return
    capbot = asyncio.run(run_capbot(args.users, args.database))
    print(f"capbot, Telegram long polling, {capbot['users']} respondents at once "
          f"({len(SCRIPT)} turns each, {capbot['turns']} turns):")
    print(f"  turns/s            {capbot['turns_per_s']:8.0f}")
    print(f"  latency p50 / p99  {capbot['p50_ms']:8.1f} / {capbot['p99_ms']:.1f} ms")
    print(f"  bot CPU / turn     {capbot['bot_cpu_ms_per_turn']:8.2f} ms")
    print(f"  fake CPU / turn    {capbot['fake_cpu_ms_per_turn']:8.2f} ms (other process)")
    if args.no_echo:
        return

    def factory(endpoint: Endpoint):
        return make_echo_application(endpoint, "aiohttp", 256)  # capbot's transport

    echo = asyncio.run(run_load(factory, args.users, capbot["turns"]))
    ratio = capbot["bot_cpu_ms_per_turn"] / echo["bot_cpu_ms_per_message"]
    print(f"echo floor (bare PTB, same transport and update processor), "
          f"{echo['messages']} messages:")
    print(f"  round trips/s      {echo['round_trips_per_s']:8.0f}")
    print(f"  latency p50 / p99  {echo['p50_ms']:8.1f} / {echo['p99_ms']:.1f} ms")
    print(f"  bot CPU / message  {echo['bot_cpu_ms_per_message']:8.2f} ms")
    print(f"capbot CPU per turn = {ratio:.1f} x the echo bot's "
          f"(targets: >= 300 turns/s, <= 3x: "
          f"{'met' if capbot['turns_per_s'] >= 300 and ratio <= 3 else 'NOT met'})")


if __name__ == "__main__":
    main()
