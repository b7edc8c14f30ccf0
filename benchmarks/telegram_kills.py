"""Probe: updates never processed when `capbot serve` is SIGKILLed under load (issue 8, defect 2).

Run: python -m benchmarks.telegram_kills [--kills 20] [--mode random|confirm] [--code DIR]

Simulated users keep writing (FakeBotApi on loopback) while a real `capbot serve` is killed
with SIGKILL and restarted `--kills` times; prints how many of the updates sent were never
stored. `--code` runs another checkout (e.g. `git worktree add /tmp/old f32d553`) for a
before/after figure. See testkit/kill_probe.py for the kill moments.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path

from testkit.kill_probe import REPO_ROOT, run_probe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--mode", choices=("random", "confirm"), default="random")
    parser.add_argument("--users", type=int, default=60)
    parser.add_argument("--rate", type=float, default=30.0, help="updates/s, all users")
    parser.add_argument("--code", type=Path, default=REPO_ROOT, help="checkout to run")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="capbot-kills-") as tmp:
        # The inbound throttle (when the code has one) is off: same work for old and new.
        result = asyncio.run(run_probe(
            Path(tmp), kills=args.kills, mode=args.mode, users=args.users, rate=args.rate,
            code_dir=args.code.resolve(), seed=args.seed,
            extra_env={"CAPBOT_TELEGRAM_INBOUND_LIMIT": "0"}))
    print(f"code: {args.code}  mode: {args.mode}")
    print(result.summary())
    print(f"updates never processed per {args.kills} kills: {len(result.missing)}")


if __name__ == "__main__":
    main()
