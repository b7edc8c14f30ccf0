"""Benchmark: Telegram and email respondents at once on a real `capbot serve` (SQLite).

Run: python -m benchmarks.load_bench [--telegram 1000] [--email 500] [--minutes 10]
     python -m benchmarks.load_bench --burst              (a deadline day, 5-minute window)
     python -m benchmarks.load_bench --flood [--flood-rate 100]   (quiet run, then flooded)

`capbot serve` runs as a process on a fresh SQLite file; this process runs the Bot API fake
with the Telegram respondents (long polling; `--telegram-limits`: the fake answers 429 past
30 messages/s and 1/s per chat, and capbot's own limiter is on) and the SMTP capture, and
appends the email respondents' mail to a throwaway Dovecot. Each respondent goes through the
whole questionnaire (Telegram: 37 actions; email: a first mail, two replies with answers, the
submit word) at a human pace, a random think time of 0.5-1.5 x the mean between a reply and
the next action, the mean chosen so that everyone finishes within the run (sustained: the
load holds for the whole run); `--burst`: everyone starts in the first half of the window and
submits in the second, faster.

`--flood`: two runs of the same respondents, the second with one more chat sending
`--flood-rate` messages a second through the middle 80 % of it, with capbot's default inbound
throttle (30 updates a minute per chat); prints the others' p99 in both, whether the flooder
got the notice and whether everything it sent was kept. Defaults 300 Telegram + 150 email
respondents for 3 minutes a run: the same turns a second as the 10-minute run.

Prints turns processed, p50/p99 turn latency (Telegram: update queued at the fake -> the reply
that ends the turn arrived there; email: APPEND done -> the reply at the SMTP capture), errors
(target zero: respondents that did not finish, 429 answers, ERROR lines and tracebacks in the
serve log, messages not processed or not stored, mail left in INBOX, replies not sent), the
serve process's RSS at the start, every --sample-seconds and at the end, and the load average.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
from pathlib import Path

from testkit.dovecot import Dovecot
from testkit.load import LoadConfig, LoadResult, percentile, run_load


def _loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def _report(title: str, r: LoadResult) -> None:
    c = r.config
    tg = r.inbound[("telegram", "processed")]
    mail = r.inbound[("email", "processed")]
    print(
        f"== {title}: {c.telegram} Telegram + {c.email} email respondents, "
        f"{c.seconds / 60:g} min{' (burst)' if c.burst else ''}"
        f"{f', one chat flooding at {c.flood_rate:g}/s' if c.flood_rate else ''}"
        f"{', Telegram limits enforced' if c.telegram_limits else ''}"
    )
    print(f"  load average (1, 5, 15 min)  {r.machine_load}")
    print(f"  wall time                    {r.wall_s:.0f} s")
    print(
        f"  turns processed              {tg + mail:,} ({tg:,} Telegram, {mail:,} email), "
        f"{(tg + mail) / r.wall_s:.1f}/s"
    )
    print(
        f"  Telegram latency p50 / p99   {1000 * percentile(r.telegram_latencies, 50):.0f} / "
        f"{1000 * percentile(r.telegram_latencies, 99):.0f} ms "
        f"(max {1000 * max(r.telegram_latencies, default=0):.0f}; "
        f"{len(r.telegram_latencies):,} turns)"
    )
    print(
        f"  email latency p50 / p99      {1000 * percentile(r.email_latencies, 50):.0f} / "
        f"{1000 * percentile(r.email_latencies, 99):.0f} ms "
        f"(max {1000 * max(r.email_latencies, default=0):.0f}; "
        f"{len(r.email_latencies):,} mails)"
    )
    print(
        f"  submitted                    {r.submitted:,} (finished: {r.telegram_done:,} "
        f"Telegram, {r.email_done:,} email)"
    )
    if r.submit_times:
        print(
            f"  receipts between             {min(r.submit_times):.0f} and "
            f"{max(r.submit_times):.0f} s after the start"
        )
    others = {f"{ch}:{st}": n for (ch, st), n in r.inbound.items() if st != "processed"}
    print(
        f"  serve CPU                    {r.serve_cpu_s:.0f} s = "
        f"{100 * r.serve_cpu_s / r.wall_s:.0f} %"
        f" of a core, {1000 * r.serve_cpu_s / max(1, r.updates_sent + r.mails_sent):.2f} ms"
        " per update or mail"
    )
    print(f"  getUpdates calls             {r.get_updates:,} ({r.get_updates / r.wall_s:.0f}/s)")
    print(f"  ERRORS                       {r.errors}")
    print(f"    respondents not finished   {len(r.failures)} {r.failures[:3]}")
    print(f"    429 answers                {r.refused_429}")
    print(
        f"    serve log                  {r.log_levels['ERROR']} ERROR, "
        f"{r.log_levels['CRITICAL']} CRITICAL, {r.tracebacks} tracebacks "
        f"({r.log_levels['WARNING']} WARNING)"
    )
    for line in r.log_samples[:5]:
        print(f"      {line}")
    print(f"    not processed (status)     {others or 0}")
    print(
        f"    not stored                 {r.updates_unstored} of {r.updates_sent:,} updates, "
        f"{r.mails_unstored} of {r.mails_sent:,} mails"
    )
    print(f"    left unconfirmed / INBOX   {r.updates_left} updates, {r.mails_left} mails")
    print(f"    outbox                     {dict(r.outbox)}")
    rss = ", ".join(f"{t / 60:.0f}m {mb:.0f}" for t, mb in r.rss_mb)
    print(f"  serve RSS (MB)               {rss}")
    if r.rss_mb:
        growth = r.rss_mb[-1][1] - r.rss_mb[1 if len(r.rss_mb) > 2 else 0][1]
        print(f"    from the first sample after the start to the end: {growth:+.0f} MB")
    if c.flood_rate:
        print(
            f"  flooder                      sent {r.flood_sent:,}, kept "
            f"{dict(r.flood_stored)}, notices {r.flood_notices}, "
            f"replies {r.flood_replies}"
        )


async def _run(config: LoadConfig, dovecot: Dovecot, workdir: Path) -> LoadResult:
    load = _loadavg()
    result = await run_load(config, dovecot.settings(), workdir)
    result.machine_load = f"{load} at the start, {_loadavg()} at the end"
    return result


async def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--telegram", type=int, help="respondents (1000; --flood: 300)")
    p.add_argument("--email", type=int, help="respondents (500; --flood: 150)")
    p.add_argument(
        "--minutes",
        type=float,
        help="run length (10; --burst: the window, 5; --flood: each run, 3)",
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--burst", action="store_true", help="a deadline-day burst")
    mode.add_argument("--flood", action="store_true", help="a quiet run, then a flooded one")
    p.add_argument("--flood-rate", type=float, default=100.0, help="messages/s (100)")
    p.add_argument(
        "--telegram-limits",
        action="store_true",
        help="the fake enforces 30 msg/s and 1/s per chat; capbot paces itself",
    )
    p.add_argument("--sample-seconds", type=float, default=60.0, help="RSS sampling (60)")
    p.add_argument(
        "--code-dir",
        type=Path,
        help="the capbot to serve (default: this one), e.g. a `git archive` of a commit",
    )
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    args = p.parse_args(argv)
    telegram = args.telegram if args.telegram is not None else (300 if args.flood else 1000)
    mails = args.email if args.email is not None else (150 if args.flood else 500)
    minutes = args.minutes or (5 if args.burst else 3 if args.flood else 10)
    config = LoadConfig(
        telegram=telegram,
        email=mails,
        seconds=60 * minutes,
        burst=args.burst,
        telegram_limits=args.telegram_limits,
        sample_every=args.sample_seconds,
        progress=True,
    )
    if args.code_dir:
        config.code_dir = args.code_dir.resolve()
    workdir = Path(tempfile.mkdtemp(prefix="capbot-load-"))
    print(f"{os.cpu_count()} CPUs; work directory {workdir}; serving {config.code_dir}")
    with Dovecot() as dovecot:
        if not args.flood:
            result = await _run(config, dovecot, workdir / "run")
            _report("load", result)
            ok = result.errors == 0
        else:
            quiet = await _run(config, dovecot, workdir / "quiet")
            _report("quiet", quiet)
            flooded = LoadConfig(**{**vars(config), "flood_rate": args.flood_rate})
            flood = await _run(flooded, dovecot, workdir / "flood")
            _report("flooded", flood)
            q99 = percentile(quiet.telegram_latencies, 99)
            f99 = percentile(flood.telegram_latencies, 99)
            lost = flood.flood_stored.get("missing", 0)
            print(
                f"== the others' Telegram p99: {1000 * q99:.0f} ms quiet, {1000 * f99:.0f} ms "
                f"flooded = {f99 / q99:.2f}x (target: within 2x); p50 "
                f"{1000 * percentile(quiet.telegram_latencies, 50):.0f} -> "
                f"{1000 * percentile(flood.telegram_latencies, 50):.0f} ms"
            )
            print(
                f"   the flooder: {flood.flood_sent:,} sent, {lost} lost, "
                f"{flood.flood_notices} notice(s)"
            )
            ok = (
                quiet.errors == 0
                and flood.errors == 0
                and f99 <= 2 * q99
                and lost == 0
                and flood.flood_notices >= 1
            )
    print("target met" if ok else "TARGET MISSED")
    if not args.keep:
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
