"""Benchmark: a reminder run of N respondents over Telegram, against a Bot API that enforces
Telegram's flood limits (30 messages/s per bot, 1/s per chat, answering 429 beyond).

Run: python -m benchmarks.remind_bench [--reminders 5000] [--database sqlite|URL]

Seeds a round whose respondents all answered last on Telegram, halfway through the
questionnaire; runs what `capbot remind` runs (bot/reminding.py, handlers/courier.py: the
outbox dispatcher, PTB with capbot's rate limiter, the aiohttp transport) against FakeBotApi
on loopback; prints the sustained rate (first to last accepted message), the most messages
the fake saw in any one-second window, the 429s it answered, the time to commit the
reminders, and the peak RSS. Target: at least 27 messages/s (90 % of 30), no 429.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import tempfile
import time
from collections import deque
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from bot.app import build_app
from bot.config import load_settings
from bot.messages import Inbound
from bot.reminding import Reminders
from handlers.courier import Courier
from testkit.fake_bot_api import FakeBotApi
from testkit.round_seed import Person, seed_round

FIRST_CHAT = 700_000


def _state(engine) -> dict:
    """Three questions into the questionnaire: the next one has buttons."""
    state = engine.new_state(ref="CB-BENCH", language="en", explicit=True)
    now = datetime.now(UTC)
    state = engine.handle(state, Inbound("console", "b", "0", kind="start"), now).state
    for n, text in enumerate(("Maria Lopez", "maria@example.org", "Ministry"), start=1):
        state = engine.handle(state, Inbound("console", "b", str(n), text=text), now).state
    return state


def _max_in_window(times: list[float], window: float = 1.0) -> int:
    best, recent = 0, deque()
    for t in times:
        recent.append(t)
        while t - recent[0] >= window:
            recent.popleft()
        best = max(best, len(recent))
    return best


async def run(count: int, database: str) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="remind-bench-"))
    url = f"sqlite+aiosqlite:///{tmp / 'bench.db'}" if database == "sqlite" else database
    async with FakeBotApi(telegram_limits=True) as api:
        settings = load_settings(database_url=url, spool_path=tmp / "spool",
                                 telegram_token=api.token, telegram_api_url=api.base_url,
                                 quiet_hours="0-0", log_level="WARNING")
        app = await build_app(settings)
        try:
            base = _state(app.engines[app.questionnaire.id])
            people = [Person(f"p{i}@example.org", "en", "KEN",
                             state={**base, "ref": f"CB-B{i:06d}"}, last_channel="telegram",
                             telegram=str(FIRST_CHAT + i)) for i in range(count)]
            for i in range(count):
                api.user(FIRST_CHAT + i)
            await seed_round(app.database, people, deadline=date(2099, 10, 1),
                             invited_at=datetime.now(UTC) - timedelta(days=30))
            reminders = Reminders(app.database, app.engines, app.questionnaire.id,
                                  app.translations, settings.reminder_policy)
            async with Courier(app) as courier:
                reminders.publish = courier.enqueue
                started = time.perf_counter()
                report = await reminders.run()
                committed = time.perf_counter() - started
                await courier.wait_idle()
                total = time.perf_counter() - started
        finally:
            await app.close()
        sends = [r for r in api.requests if r.method == "sendMessage"]
        accepted = sorted(r.at for r in sends if r.status == 200)
        span = accepted[-1] - accepted[0] if len(accepted) > 1 else 0.0
        rate = (len(accepted) - 1) / span if span else 0.0
        return {
            "reminders": len(report.queued), "accepted": len(accepted),
            "refused_429": api.flood_refusals, "sustained_msg_per_s": round(rate, 2),
            "share_of_30": f"{rate / 30:.1%}",
            "max_in_any_second": _max_in_window(accepted),
            "commit_s": round(committed, 2), "total_s": round(total, 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reminders", type=int, default=5000)
    parser.add_argument("--database", default="sqlite", help="sqlite, or a PostgreSQL URL")
    args = parser.parse_args(argv)
    figures = asyncio.run(run(args.reminders, args.database))
    print(json.dumps(figures, indent=2))
    ok = figures["sustained_msg_per_s"] >= 27 and figures["refused_429"] == 0
    print("target (>= 27 msg/s, no 429):", "met" if ok else "MISSED", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
