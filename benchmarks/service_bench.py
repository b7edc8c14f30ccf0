"""Benchmark: simulated respondents completing the questionnaire through the service on SQLite.

Run: python -m benchmarks.service_bench [--respondents 200] [--concurrency 50] [--seed 10000]
Prints turns/s, p50/p99 turn latency and peak RSS for the service (durable commit per turn),
and turns/s for the bare engine (no storage) on the same script, for the ratio.

`--replicas`: the same load, in the same run, on SQLite (one process), on PostgreSQL with one
replica process and with two (each two-replica process takes half the respondents and the
concurrency; both start together): turns/s over the wall time, p50/p99 over every turn. A
throwaway PostgreSQL cluster is started unless `--postgres-url` names a database.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from bot.app import build_app
from bot.config import load_settings
from bot.messages import Inbound
from testkit.conversation import FULL_RUN_EN


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _inbound(user: str, n: int, kind: str, value: str) -> Inbound:
    if kind == "choice":
        return Inbound("console", user, f"{user}:{n}", kind="choice", choice=value, raw=value)
    return Inbound("console", user, f"{user}:{n}", kind="text", text=value, raw=value)


async def _respondent(app, user: str, latencies: list[float]) -> None:
    script = [("start", "/start"), *FULL_RUN_EN]
    for n, (kind, value) in enumerate(script):
        inbound = (Inbound("console", user, f"{user}:{n}", kind="start", text=value)
                   if kind == "start" else _inbound(user, n, kind, value))
        t0 = time.perf_counter()
        result = await app.service.handle(inbound, language="en", explicit_language=True)
        latencies.append(time.perf_counter() - t0)
        if kind != "start" and result.replies and result.replies[0].kind == "error":
            raise RuntimeError(f"script went off track at {value!r}: {result.replies[0].text}")
    if result.awaiting != "done":
        raise RuntimeError(f"respondent {user} ended at {result.awaiting}")


async def _seed(app, count: int) -> None:
    """Store `count` submitted questionnaires quickly (bulk Core inserts of real answer rows)."""
    from sqlalchemy import insert

    from storage.models import answers, respondents, submissions

    now = datetime.now(UTC)
    engine = app.engines[app.questionnaire.id]
    async with app.db.begin() as conn:
        for start in range(0, count, 1000):
            batch = range(start, min(count, start + 1000))
            await conn.execute(insert(respondents), [
                {"id": i + 1, "channel": "seed", "channel_user_id": f"s{i}", "state":
                 engine.new_state(ref=f"SEED-{i}"), "language": "en", "unreachable": False,
                 "created_at": now, "updated_at": now} for i in batch])
            await conn.execute(insert(submissions), [
                {"id": i + 1, "respondent_id": i + 1, "questionnaire_id": app.questionnaire.id,
                 "questionnaire_version": "1", "reference": f"SEED-{i}", "version": 1,
                 "status": "submitted", "language": "en", "channel": "seed", "started_at": now,
                 "updated_at": now, "submitted_at": now} for i in batch])
            await conn.execute(insert(answers), [
                {"submission_id": i + 1, "question_id": q, "repeat_index": 0, "value": v,
                 "value_code": str(v), "answered_at": now}
                for i in batch for q, v in (("R1_name", f"Name {i}"), ("R3_org", "Ministry"),
                                            ("S1_any_activity", "NO"), ("C1_consent", "YES"))])
        if conn.dialect.name == "postgresql":  # explicit ids: move the sequences past them
            from sqlalchemy import text

            for table in ("respondents", "submissions"):
                await conn.execute(text(f"SELECT setval(pg_get_serial_sequence('{table}', "
                                        f"'id'), (SELECT max(id) FROM {table}))"))


def _bare_engine(app, rounds: int) -> float:
    engine = app.engines[app.questionnaire.id]
    now = datetime.now(UTC)
    script = [("start", "/start"), *FULL_RUN_EN]
    turns = 0
    t0 = time.perf_counter()
    for r in range(rounds):
        state = engine.new_state(ref="CB-BENCH", language="en", explicit=True)
        for n, (kind, value) in enumerate(script):
            inbound = (Inbound("console", "b", str(n), kind="start") if kind == "start"
                       else _inbound(f"b{r}", n, kind, value))
            state = engine.handle(state, inbound, now).state
            turns += 1
        assert state["phase"] == "done", state["phase"]
    return turns / (time.perf_counter() - t0)


async def _worker(url: str, respondents: int, concurrency: int, prefix: str) -> None:
    """One replica process: builds its app, says "ready", runs on "go", prints JSON."""
    app = await build_app(load_settings(database_url=url, spool_path=Path(
        tempfile.gettempdir()) / f"bench-{os.getpid()}.spool"))
    print("ready", flush=True)
    await asyncio.to_thread(sys.stdin.readline)
    latencies: list[float] = []
    sem = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with sem:
            await _respondent(app, f"{prefix}{i}", latencies)

    start = time.time()
    await asyncio.gather(*(one(i) for i in range(respondents)))
    end = time.time()
    await app.close()
    print(json.dumps({"start": start, "end": end, "latencies": latencies}), flush=True)


def _replicas(url: str, count: int, respondents: int, concurrency: int) -> dict:
    """`count` worker processes sharing the load; wall time from the first start to the last
    end."""
    procs = [subprocess.Popen(
        [sys.executable, "-m", "benchmarks.service_bench", "--worker", url,
         "--respondents", str(respondents // count), "--concurrency",
         str(max(1, concurrency // count)), "--prefix", f"w{n}-{time.time_ns()}-"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for n in range(count)]
    for p in procs:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    results = [json.loads(p.communicate(timeout=1800)[0].strip().splitlines()[-1])
               for p in procs]
    latencies = sorted(x for r in results for x in r["latencies"])
    wall = max(r["end"] for r in results) - min(r["start"] for r in results)
    return {"turns": len(latencies), "turns_s": len(latencies) / wall,
            "p50": statistics.median(latencies) * 1000,
            "p99": latencies[int(len(latencies) * 0.99) - 1] * 1000}


async def _seeded(url: str, seed: int) -> None:
    app = await build_app(load_settings(database_url=url, spool_path=Path(
        tempfile.gettempdir()) / f"bench-seed-{os.getpid()}.spool"))
    await _seed(app, seed)
    await app.close()


async def compare_replicas(args: argparse.Namespace) -> None:
    from contextlib import ExitStack

    from testkit.postgres import Postgres

    rows = []
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        runs = [("SQLite, 1 process", f"sqlite+aiosqlite:///{Path(tmp) / 'bench.db'}", 1)]
        if args.postgres_url:
            pg_urls = [args.postgres_url, args.postgres_url]
        else:
            server = stack.enter_context(Postgres())
            pg_urls = [server.create_database(f"bench_{n}") for n in (1, 2)]
        runs += [("PostgreSQL, 1 replica", pg_urls[0], 1),
                 ("PostgreSQL, 2 replicas", pg_urls[1], 2)]
        seeded: set[str] = set()
        for label, url, count in runs:
            if url not in seeded:
                await _seeded(url, args.seed)
                seeded.add(url)
            result = await asyncio.to_thread(_replicas, url, count, args.respondents,
                                             args.concurrency)
            rows.append((label, result))
    pg = "the given PostgreSQL" if args.postgres_url else \
        "the throwaway PostgreSQL: fsync and synchronous_commit off"
    print(f"service, {args.respondents} respondents, concurrency {args.concurrency} in all, "
          f"{args.seed} seeded submissions, a commit per turn (SQLite synchronous=FULL; {pg})")
    print(f"  {'':24} {'turns':>6} {'turns/s':>8} {'p50 ms':>8} {'p99 ms':>8}")
    for label, r in rows:
        print(f"  {label:24} {r['turns']:>6} {r['turns_s']:>8,.0f} {r['p50']:>8.1f} "
              f"{r['p99']:>8.1f}")


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--respondents", type=int, default=200)
    ap.add_argument("--concurrency", type=int, default=50)
    ap.add_argument("--seed", type=int, default=10000, help="stored submissions before the run")
    ap.add_argument("--replicas", action="store_true",
                    help="SQLite, PostgreSQL with 1 and 2 replica processes, side by side")
    ap.add_argument("--postgres-url", help="an empty PostgreSQL database (else a throwaway)")
    ap.add_argument("--worker", metavar="URL", help=argparse.SUPPRESS)
    ap.add_argument("--prefix", default="r", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        await _worker(args.worker, args.respondents, args.concurrency, args.prefix)
        return
    if args.replicas:
        await compare_replicas(args)
        return
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite+aiosqlite:///{Path(tmp) / 'bench.db'}"
        app = await build_app(load_settings(database_url=url))
        await _seed(app, args.seed)
        latencies: list[float] = []
        sem = asyncio.Semaphore(args.concurrency)

        async def one(i: int) -> None:
            async with sem:
                await _respondent(app, f"r{i}", latencies)

        t0 = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(args.respondents)))
        elapsed = time.perf_counter() - t0
        await app.close()
        lat = sorted(latencies)
        p50 = statistics.median(lat) * 1000
        p99 = lat[int(len(lat) * 0.99) - 1] * 1000
        bare = _bare_engine(app, max(20, args.respondents // 4))
        print(f"service (SQLite WAL, synchronous=FULL, commit per turn), {args.respondents} "
              f"respondents, concurrency {args.concurrency}, {args.seed} seeded submissions")
        print(f"  turns:            {len(lat)}")
        print(f"  turns/s:          {len(lat) / elapsed:,.0f}")
        print(f"  latency p50/p99:  {p50:.2f} ms / {p99:.2f} ms")
        print(f"  peak RSS:         {_rss_mb():.0f} MB")
        print(f"bare engine (no storage): {bare:,.0f} turns/s "
              f"(service/engine ratio {len(lat) / elapsed / bare:.3f})")


if __name__ == "__main__":
    asyncio.run(main())
