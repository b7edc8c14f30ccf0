"""Probe: what SIGKILLs of `capbot serve` under Telegram and email traffic lose or double.

Run: python -m benchmarks.mixed_kills [--kills 20] [--respondents 60] [--mails 60] [--seed 13]

Starts a throwaway Dovecot, then runs testkit/mixed_kills.py: Telegram respondents (the Bot API
fake on loopback) go through the whole questionnaire and mail arrives while a real `capbot
serve` is killed with SIGKILL at random moments and restarted; prints what was stored, lost,
and sent twice against the outbox rows in flight at the kills.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path

from testkit.dovecot import Dovecot
from testkit.mixed_kills import run_mixed_kills


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--respondents", type=int, default=60)
    parser.add_argument("--mails", type=int, default=60)
    parser.add_argument("--seed", type=int, default=13)
    args = parser.parse_args()
    reason = Dovecot.missing()
    if reason:
        raise SystemExit(reason)
    dovecot = Dovecot()
    dovecot.start()
    try:
        dovecot.reset()
        with tempfile.TemporaryDirectory(prefix="capbot-mixed-kills-") as tmp:
            result = asyncio.run(
                run_mixed_kills(
                    Path(tmp),
                    dovecot.settings(),
                    kills=args.kills,
                    respondents=args.respondents,
                    mails=args.mails,
                    seed=args.seed,
                )
            )
    finally:
        dovecot.stop()
    print(result.summary())
    print(
        f"duplicates per kill: {result.duplicates / max(1, args.kills):.2f} "
        f"(in flight per kill: {result.in_flight_at_kills / max(1, args.kills):.2f}); "
        f"acknowledged updates not stored: {len(result.acknowledged_not_stored)}"
    )
    if result.failure:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
