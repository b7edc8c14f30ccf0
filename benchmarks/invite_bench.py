"""Benchmark: `capbot invite` of N contacts by email, against aiosmtpd on loopback.

Run: python -m benchmarks.invite_bench [--contacts 5000] [--rate 0] [--database sqlite|URL]

Writes a contacts file (the six languages in turn), runs `capbot invite` as a process (what
the Secretariat runs: read, commit 200 invitations per transaction, render each email form,
send through the pooled SMTP client) and prints the sustained rate at the SMTP server (first
to last accepted message), the whole run's wall time, and the peak RSS of the capbot process.
`--rate 0` measures capacity; the default CAPBOT_EMAIL_RATE is 10/s (`--rate 10` shows the
pacing holds).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

from testkit.smtp import SmtpCapture

ROOT = Path(__file__).resolve().parents[1]
LANGS = ("ar", "en", "es", "fr", "ru", "zh")
COUNTRIES = ("Egypt", "Kenya", "Mexico", "Senegal", "Kazakhstan", "China")


def _contacts(path: Path, n: int) -> None:
    rows = ["email,name,organization,country,language,org_type\n"]
    rows += [f"p{i}@example.org,Person {i},Ministry {i},{COUNTRIES[i % 6]},{LANGS[i % 6]},"
             "government\n" for i in range(n)]
    path.write_text("".join(rows), encoding="utf-8")


async def run(count: int, rate: float, database: str) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="invite-bench-"))
    url = f"sqlite+aiosqlite:///{tmp / 'bench.db'}" if database == "sqlite" else database
    contacts = tmp / "contacts.csv"
    _contacts(contacts, count)
    smtp = SmtpCapture()
    await smtp.start()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAPBOT_")}
    env.update({
        "CAPBOT_DATABASE_URL": url, "CAPBOT_IMAP_HOST": "127.0.0.1", "CAPBOT_IMAP_PORT": "1",
        "CAPBOT_IMAP_USER": "bot", "CAPBOT_IMAP_PASSWORD": "pw",
        "CAPBOT_IMAP_SECURITY": "plain", "CAPBOT_SMTP_HOST": "127.0.0.1",
        "CAPBOT_SMTP_PORT": str(smtp.port), "CAPBOT_SMTP_SECURITY": "plain",
        "CAPBOT_EMAIL_FROM": "bot@capbot.test", "CAPBOT_SECRET_KEY": "bench-secret",
        "CAPBOT_TELEGRAM_BOT_USERNAME": "capbot_bench_bot", "CAPBOT_EMAIL_RATE": str(rate),
        "PYTHONPATH": str(ROOT)})
    try:
        started = time.perf_counter()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot", "invite", str(contacts), "--deadline", "2031-10-01",
            env=env, cwd=str(tmp), stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
        first = last = None
        seen = 0
        waiting = asyncio.ensure_future(proc.communicate())
        while not waiting.done() or len(smtp.messages) > seen:
            now = time.perf_counter()
            if len(smtp.messages) > seen:
                if first is None:
                    first = now
                seen = len(smtp.messages)
                last = now
            await asyncio.wait([waiting], timeout=0.01)
        out, err = waiting.result()
        wall = time.perf_counter() - started
        if proc.returncode != 0:
            raise SystemExit(f"capbot invite failed ({proc.returncode}): {err.decode()}")
    finally:
        await smtp.stop()
    sustained = (seen - 1) / (last - first) if first is not None and last > first else 0.0
    return {
        "contacts": count, "received": seen, "rate_setting": rate,
        "sustained_msg_per_s": round(sustained, 1), "wall_s": round(wall, 1),
        "end_to_end_msg_per_s": round(seen / wall, 1),
        "first_mail_after_s": round(first - started, 2) if first else None,
        "peak_rss_mb_capbot": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
                                    / 1024),
        "mean_kb_per_mail": round(sum(len(m.data) for m in smtp.messages) / max(1, seen)
                                  / 1024, 1),
        "summary": out.decode().strip().splitlines()[0] if out else "",
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--contacts", type=int, default=5000)
    p.add_argument("--rate", type=float, default=0.0, help="CAPBOT_EMAIL_RATE (0: unpaced)")
    p.add_argument("--database", default="sqlite", help="sqlite, or a database URL")
    a = p.parse_args()
    print(json.dumps(asyncio.run(run(a.contacts, a.rate, a.database)), indent=2,
                     ensure_ascii=False))


if __name__ == "__main__":
    main()
