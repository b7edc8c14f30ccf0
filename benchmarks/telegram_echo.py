"""Benchmark: a bare PTB echo bot under simulated Telegram users — the floor for capbot's bot.

Run: python -m benchmarks.telegram_echo [--users 100] [--messages 1000]
                                        [--transport aiohttp|httpx] [--concurrency 256]
Prints round trips/s, p50/p99 round-trip latency and the bot process's CPU ms per message.

CPU attribution: FakeBotApi and the simulated users run in a child process, so
time.process_time() in this process counts the bot alone (PTB, the transport, the event loop).
Reuse `run_load(make_application, users, messages)` with another Application factory to
measure the real bot on the same load.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from telegram import Update
from telegram.ext import (
    Application,
    ApplicationBuilder,
    ContextTypes,
    MessageHandler,
    filters,
)

from handlers.telegram.ordering import PerChatUpdateProcessor
from handlers.telegram.request import AiohttpRequest
from testkit.fake_bot_api import FakeBotApi, polling

REPO_ROOT = Path(__file__).resolve().parents[1]
WARM_UP_MESSAGES = 20  # opens the pooled connections before the measured run


@dataclass(frozen=True)
class Endpoint:
    """Where the fake Bot API listens (it lives in another process)."""

    token: str
    base_url: str
    base_file_url: str

    def builder(self) -> ApplicationBuilder:
        builder = ApplicationBuilder().token(self.token).base_url(self.base_url)
        return builder.base_file_url(self.base_file_url)


ApplicationFactory = Callable[[Endpoint], Application | Awaitable[Application]]


async def _echo(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    await update.effective_message.reply_text(update.effective_message.text)


def make_echo_application(
    endpoint: Endpoint, transport: str = "aiohttp", concurrency: int = 256
) -> Application:
    """The bare echo bot; concurrency=1 processes updates one by one (PTB's default)."""
    builder = endpoint.builder()
    if transport == "aiohttp":  # capbot's transport
        builder = builder.request(AiohttpRequest()).get_updates_request(AiohttpRequest())
    if concurrency > 1:
        builder = builder.concurrent_updates(PerChatUpdateProcessor(concurrency))
    application = builder.build()
    application.add_handler(MessageHandler(filters.TEXT & ~filters.COMMAND, _echo))
    return application


# --- the fake's side (child process) -----------------------------------------------------------


async def _converse(api: FakeBotApi, users: int, messages: int) -> dict[str, Any]:
    """`users` users at once, each sending its share of `messages` and awaiting each echo."""
    latencies: list[float] = []
    wrong: list[str] = []

    async def one_user(user_id: int, count: int) -> None:
        user = api.user(user_id)
        for n in range(count):
            text = f"{user_id}:{n}"
            started = time.perf_counter()
            user.send_text(text)
            reply = await user.next_message(timeout=30)
            latencies.append(time.perf_counter() - started)
            if reply.text != text:
                wrong.append(f"{text} -> {reply.text}")

    shares = [messages // users + (i < messages % users) for i in range(users)]
    cpu, started = time.process_time(), time.perf_counter()
    await asyncio.gather(*(one_user(100_000 + i, share) for i, share in enumerate(shares)))
    wall = time.perf_counter() - started
    fake_cpu = time.process_time() - cpu
    return {"wall_s": wall, "latencies": latencies, "wrong": wrong, "fake_cpu_s": fake_cpu}


async def _serve_fake() -> None:
    """The child: one JSON line out per command line in (stdin/stdout)."""

    def reply(payload: object) -> None:
        sys.stdout.write(json.dumps(payload) + "\n")
        sys.stdout.flush()

    async with FakeBotApi() as api:
        reply([api.token, api.base_url, api.base_file_url])
        while (line := await asyncio.to_thread(sys.stdin.readline)).strip():
            command, users, messages = json.loads(line)
            if command != "run":
                break
            reply(await _converse(api, users, messages))


# --- the bot's side (this process) -------------------------------------------------------------


async def run_load(
    make_application: ApplicationFactory, users: int = 100, messages: int = 1000
) -> dict[str, float]:
    """Run `messages` echo round trips from `users` concurrent users through the Application
    that `make_application(endpoint)` builds (polling); return throughput, latency, CPU."""
    # A plain subprocess rather than multiprocessing: callers need no __main__ guard.
    fake = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "benchmarks.telegram_echo",
        "--serve-fake",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        cwd=REPO_ROOT,
        limit=2**24,  # one JSON line carries every latency
    )
    assert fake.stdin is not None and fake.stdout is not None

    async def ask(*command: object) -> Any:
        fake.stdin.write(json.dumps(command).encode() + b"\n")
        await fake.stdin.drain()
        return json.loads(await fake.stdout.readline())

    try:
        endpoint = Endpoint(*json.loads(await fake.stdout.readline()))
        application = make_application(endpoint)
        if inspect.isawaitable(application):
            application = await application
        async with polling(application, timeout=10):
            await ask("run", min(users, WARM_UP_MESSAGES), WARM_UP_MESSAGES)
            cpu = time.process_time()
            result = await ask("run", users, messages)
            bot_cpu = time.process_time() - cpu
    finally:
        fake.stdin.close()
        try:
            await asyncio.wait_for(fake.wait(), 10)
        except TimeoutError:
            fake.kill()
    if result["wrong"]:
        raise AssertionError(f"{len(result['wrong'])} wrong echoes, e.g. {result['wrong'][:3]}")
    percentiles = statistics.quantiles(result["latencies"], n=100)
    return {
        "users": users,
        "messages": messages,
        "round_trips_per_s": messages / result["wall_s"],
        "p50_ms": percentiles[49] * 1000,
        "p99_ms": percentiles[98] * 1000,
        "bot_cpu_ms_per_message": bot_cpu * 1000 / messages,
        "fake_cpu_ms_per_message": result["fake_cpu_s"] * 1000 / messages,
        "wall_s": result["wall_s"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--transport", choices=("aiohttp", "httpx"), default="aiohttp")
    parser.add_argument("--concurrency", type=int, default=256, help="1 = sequential updates")
    parser.add_argument("--serve-fake", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_fake:
        asyncio.run(_serve_fake())
        return

    def factory(endpoint: Endpoint) -> Application:
        return make_echo_application(endpoint, args.transport, args.concurrency)

    figures = asyncio.run(run_load(factory, args.users, args.messages))
    ordering = "per-chat ordering" if args.concurrency > 1 else "sequential"
    print(f"echo bot, {args.transport}, {ordering} (concurrency {args.concurrency}):")
    print(f"  {figures['messages']} messages from {figures['users']} users")
    print(f"  round trips/s      {figures['round_trips_per_s']:8.0f}")
    print(f"  latency p50 / p99  {figures['p50_ms']:8.1f} / {figures['p99_ms']:.1f} ms")
    print(f"  bot CPU / message  {figures['bot_cpu_ms_per_message']:8.2f} ms")
    print(f"  fake CPU / message {figures['fake_cpu_ms_per_message']:8.2f} ms (other process)")


if __name__ == "__main__":
    main()
