"""Benchmark: CSV export time and peak RSS per file against a plain SQL-to-csv.writer baseline.

Run: python -m benchmarks.export_bench [--submissions 100000] [--keep DIR]

Seeds a temporary SQLite file with bulk Core inserts (realistic answers: six languages, three
channels, drafts, cancelled and amended reports, 0-5 activities each, ~30 answers per
submission), then runs every measurement in a fresh child process, so that each peak RSS
(ru_maxrss) belongs to that measurement alone:

  baseline   SELECT * FROM answers through the same async engine, written with csv.writer
  sqlite3    the same dump with the standard library's sqlite3 driver (for reference)
  <file>     `capbot export` of that one file (submissions, activities, answers, codebook)
  all (dir)  the full export, four files in a directory (one pass over the data)
  all (zip)  the full export as one zip
  stats      `capbot stats` (collect_stats)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import json
import random
import resource
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

JOBS = ("baseline", "sqlite3", "submissions", "activities", "answers", "codebook", "all-dir",
        "all-zip", "stats")

_NAMES = ["Maria Lopez", "Marie Dupont", "Мария Иванова", "مريم أحمد", "李娜", "José Pérez",
          "Олег Петров", "فاطمة الزهراء", "王伟", "Aisha Bello", "Nguyễn Văn An", "Jean-Luc"]
_ORGS = ["Ministry of Environment", "Ministère de l'Environnement", "Министерство природы",
         "وزارة البيئة", "生态环境部", "Secretaría de Medio Ambiente",
         "National Biosafety Authority", "University of Nairobi", "-Biosafety Network", '=HYPERLINK("http://x","y")']
_TITLES = ["Workshop on risk assessment", "Atelier sur la biosécurité",
           "Семинар по оценке рисков",
           "ورشة عمل حول السلامة الأحيائية", "生物安全培训班", "Curso de detección de OVM",
           "Regional e-learning course", "Training of customs officers, phase 2"]
_SUMMARY = ("Trained {n} officials in risk assessment; follow-up planned.\n"
            "Formation de {n} agents, suivi prévu. 培训了{n}名官员。 تم تدريب {n} موظفا.")
_COUNTRIES = ["ke", "fr", "cn", "ru", "eg", "mx", "br", "in", "ng", "za", "pe", "vn", "ma",
              "ar", "co", "et", "gh", "id", "jo", "kz", "lb", "mg", "np", "ph", "sn", "tn", "ua"]


def _rss_mb() -> float:
    """Peak RSS of this process. VmHWM belongs to the address space, so it starts afresh at
    exec; ru_maxrss would carry the parent's peak over fork+exec on Linux."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- seeding -----------------------------------------------------------------------------------


def _codes(rng: random.Random, options: list[str], low: int, high: int) -> list[str]:
    picked = set(rng.sample(options, min(len(options), rng.randint(low, high))))
    return [o for o in options if o in picked]


def _answers(qn: Any, rng: random.Random, i: int) -> list[tuple[str, int, Any]]:
    """A plausible set of answers (question id, repeat index, value) for one report."""
    opts = {qid: [o.code for o in q.options] for qid, q in qn.questions.items()}
    out: list[tuple[str, int, Any]] = []
    orgtype = rng.choice(opts["R4_orgtype"])
    gov = orgtype in ("PARTY_GOV", "NON_PARTY_GOV")
    out += [("R1_name", 0, rng.choice(_NAMES)), ("R2_email", 0, f"user{i}@example.org"),
            ("R3_org", 0, rng.choice(_ORGS)), ("R4_orgtype", 0, orgtype)]
    if orgtype == "OTHER":
        out.append(("R4_orgtype_other", 0, "Comité national"))
    out.append(("R5_country", 0, rng.choice(_COUNTRIES) if gov or rng.random() < 0.5 else None))
    activities = rng.choices([0, 1, 2, 3, 4, 5], weights=[34, 34, 17, 9, 4, 2])[0]
    out.append(("S1_any_activity", 0, "YES" if activities else "NO"))
    for rep in range(activities):
        scope = rng.choice(opts["A4_scope"])
        status = rng.choice(opts["A6_status"])
        modality = _codes(rng, opts["A10_modality"], 1, 2)
        n = rng.randint(5, 400)
        out += [("A1_title", rep, rng.choice(_TITLES)),
                ("A2_kind", rep, rng.choice(opts["A2_kind"])),
                ("A3_role", rep, _codes(rng, opts["A3_role"], 1, 2)), ("A4_scope", rep, scope)]
        if scope != "GLOBAL":
            out.append(("A5_countries", rep, rng.sample(_COUNTRIES, rng.randint(1, 3))))
        out.append(("A6_status", rep, status))
        out.append(("A7_start", rep, f"20{rng.randint(21, 24)}-{rng.randint(1, 12):02d}"))
        out.append(("A8_end", rep, "2025-06" if status == "COMPLETED" else None))
        out += [("A9_areas", rep, _codes(rng, opts["A9_areas"], 1, 4)),
                ("A10_modality", rep, modality),
                ("A11_audience", rep, _codes(rng, opts["A11_audience"], 0, 3) or None)]
        if {"TRAINING_WORKSHOP", "ELEARNING", "EXPERIENTIAL", "ACADEMIC"} & set(modality):
            out.append(("A12_trained", rep, n))
        out += [("A13_funding_type", rep, _codes(rng, opts["A13_funding_type"], 0, 2) or None),
                ("A14_budget", rep, {"amount": str(rng.randint(1, 900) * 500),
                                     "currency": rng.choice(["USD", "EUR", "CNY"])}
                 if rng.random() < 0.6 else None),
                ("A15_summary", rep, _SUMMARY.format(n=n) if rng.random() < 0.7 else None),
                ("A16_link", rep, f"https://example.org/a/{i}/{rep}" if rng.random() < 0.3
                 else None)]
        if rep < 4:
            out.append(("A17_more", rep, "YES" if rep + 1 < activities else "NO"))
    needs = rng.choice(opts["N2_has_needs"])
    out += [("N1_assessed", 0, rng.choice(["YES", "NO"])), ("N2_has_needs", 0, needs)]
    if needs != "NO":
        areas = _codes(rng, opts["N3_need_areas"], 1, 6)
        out.append(("N3_need_areas", 0, areas))
        if len(areas) > 3:
            out.append(("N4_top3", 0, areas[:3]))
        out += [("N5_train_audience", 0, _codes(rng, opts["N5_train_audience"], 0, 3) or None),
                ("N6_pref_modality", 0, _codes(rng, opts["N6_pref_modality"], 0, 3) or None)]
    if gov:
        out.append(("N7_coord_mech", 0, rng.choice(["YES", "NO"])))
    out += [("C1_consent", 0, "YES"),
            ("C2_comments", 0, "Merci / شكرا / 谢谢" if rng.random() < 0.2 else None)]
    return out


def seed(url: str, count: int) -> dict[str, int]:
    """`count` submissions with their respondents and answers, by bulk Core inserts."""
    from sqlalchemy import create_engine, event, insert
    from sqlalchemy.engine import make_url

    from bot.app import load_content
    from bot.config import load_settings
    from bot.i18n import LANGUAGES
    from storage.db import create_engine as create_async
    from storage.db import upgrade
    from storage.models import answers, respondents, submissions
    from storage.repository import flat_value

    async def schema() -> None:
        engine = create_async(url)
        await upgrade(engine)
        await engine.dispose()

    asyncio.run(schema())
    _, qn, _ = load_content(load_settings(database_url=url))
    sync = create_engine(make_url(url).set(drivername="sqlite"))

    @event.listens_for(sync, "connect")
    def fast(dbapi_connection, _record) -> None:  # seeding only: no fsync per batch
        dbapi_connection.execute("PRAGMA synchronous=OFF")
        dbapi_connection.execute("PRAGMA journal_mode=WAL")

    repeated = {q.id for q in qn.questions.values() if q.repeated}
    t0 = datetime(2025, 1, 6, 8, 0, tzinfo=UTC)
    n_answers = 0
    sid = 0
    with sync.connect() as conn:
        for start in range(0, count, 2000):
            resp_rows: list[dict[str, Any]] = []
            sub_rows: list[dict[str, Any]] = []
            ans_rows: list[dict[str, Any]] = []
            rid = start
            while sid < min(count, start + 2000):
                rid += 1
                rng = random.Random(rid)
                lang = LANGUAGES[rid % 6]
                channel = rng.choices(["telegram", "email", "console"], weights=[6, 3, 1])[0]
                started = t0 + timedelta(minutes=rid % 50000, seconds=rid % 59)
                status = rng.choices(["submitted", "draft", "cancelled"],
                                     weights=[82, 13, 5])[0]
                versions = 2 if status == "submitted" and rng.random() < 0.04 else 1
                versions = min(versions, count - sid)
                values = _answers(qn, rng, rid)
                if status != "submitted":
                    values = values[:rng.randint(1, len(values))]
                last = values[-1][0] if status != "submitted" else None
                state_answers = {(f"{q}@{r}" if q in repeated else q): v for q, r, v in values}
                resp_rows.append({
                    "id": rid, "channel": channel, "channel_user_id": f"u{rid}",
                    "display_name": None, "language": lang, "unreachable": False,
                    "state": {"v": 1, "questionnaire": qn.id, "qversion": qn.version,
                              "ref": f"CB-{rid:07d}", "version": versions, "lang": lang,
                              "phase": {"submitted": "done", "draft": "asking",
                                        "cancelled": "cancelled"}[status],
                              "slot": last, "answers": state_answers, "pending": [],
                              "resume": "asking" if status == "cancelled" else None},
                    "submission_id": sid + versions, "created_at": started,
                    "updated_at": started + timedelta(minutes=20)})
                for version in range(1, versions + 1):
                    sid += 1
                    at = started + timedelta(minutes=20 * version)
                    sub_rows.append({
                        "id": sid, "respondent_id": rid, "questionnaire_id": qn.id,
                        "questionnaire_version": qn.version, "reference": f"CB-{rid:07d}",
                        "version": version, "supersedes_id": sid - 1 if version > 1 else None,
                        "status": status, "language": lang, "channel": channel,
                        "started_at": started, "updated_at": at,
                        "submitted_at": at if status == "submitted" else None})
                    for n, (qid, rep, value) in enumerate(values):
                        ans_rows.append({
                            "submission_id": sid, "question_id": qid, "repeat_index": rep,
                            "value": value, "value_code": flat_value(value),
                            "answered_at": started + timedelta(seconds=20 * n),
                            "channel_message_id": f"{channel}:{rid}:{version}:{n}"})
            with conn.begin():
                conn.execute(insert(respondents), resp_rows)
                conn.execute(insert(submissions), sub_rows)
                conn.execute(insert(answers), ans_rows)
            n_answers += len(ans_rows)
    sync.dispose()
    return {"submissions": sid, "answers": n_answers}


# -- jobs (each in its own process) ------------------------------------------------------------


async def _baseline(url: str, out: Path) -> int:
    from sqlalchemy import text

    from storage.db import create_engine

    engine = create_engine(url)
    rows = 0
    async with engine.connect() as conn:
        result = await conn.stream(text("SELECT * FROM answers")
                                   .execution_options(yield_per=5000))
        with out.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            async for part in result.partitions(5000):
                writer.writerows(part)
                rows += len(part)
    await engine.dispose()
    return rows


def _sqlite3_dump(url: str, out: Path) -> int:
    from sqlalchemy.engine import make_url

    conn = sqlite3.connect(make_url(url).database)
    rows = 0
    with out.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        cursor = conn.execute("SELECT * FROM answers")
        while part := cursor.fetchmany(5000):
            writer.writerows(part)
            rows += len(part)
    conn.close()
    return rows


async def _export(url: str, out: Path, job: str) -> dict[str, int]:
    """The full export through `capbot export` itself; one file through the same functions."""
    from bot.app import load_content
    from bot.config import load_settings
    from reports.cli import run_export, tune_gc_for_batch
    from reports.csvfiles import export_dir
    from reports.options import ExportOptions
    from storage.db import create_engine

    settings = load_settings(database_url=url)
    if job in ("all-dir", "all-zip"):
        target = out / "export.zip" if job == "all-zip" else out / "export"
        args = argparse.Namespace(out=str(target), status="submitted", since=None, until=None,
                                  channel=None, country=None, questionnaire=None, lang=None,
                                  split_multi=False)
        with contextlib.redirect_stdout(sys.stderr):
            if await run_export(settings, args) != 0:
                raise RuntimeError("capbot export failed")
        return {}
    questionnaires, _, translations = load_content(settings)
    tune_gc_for_batch()  # as run_export does
    engine = create_engine(url)
    try:
        summary = await export_dir(engine, questionnaires, translations, ExportOptions(), out,
                                   tables=(job,))
    finally:
        await engine.dispose()
    return summary.rows


async def _stats(url: str) -> int:
    from bot.app import load_content
    from bot.config import load_settings
    from reports.stats import collect_stats
    from storage.db import create_engine

    _, qn, translations = load_content(load_settings(database_url=url))
    engine = create_engine(url)
    stats = await collect_stats(engine, qn, translations)
    await engine.dispose()
    return stats["totals"]["reports"]


def run_job(job: str, url: str, out: Path) -> dict[str, Any]:
    # Import everything the job needs first, so that timing covers the work only.
    import bot.app  # noqa: F401
    import reports.cli  # noqa: F401

    start_rss = _rss_mb()
    t0 = time.perf_counter()
    if job == "baseline":
        rows: Any = asyncio.run(_baseline(url, out / "baseline.csv"))
    elif job == "sqlite3":
        rows = _sqlite3_dump(url, out / "sqlite3.csv")
    elif job == "stats":
        rows = asyncio.run(_stats(url))
    else:
        rows = asyncio.run(_export(url, out, job))
    seconds = time.perf_counter() - t0
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    if rows == {}:  # the CLI run: count the rows it wrote
        rows = _count_rows(out)
    return {"job": job, "seconds": seconds, "peak_rss_mb": _rss_mb(),
            "start_rss_mb": start_rss, "rows": rows, "bytes": size}


def _count_rows(out: Path) -> int:
    import zipfile

    total = 0
    for path in out.rglob("*"):
        if path.suffix == ".zip":
            with zipfile.ZipFile(path) as zf:
                for name in zf.namelist():
                    with zf.open(name) as fh:
                        total += sum(1 for _ in csv.reader(
                            line.decode("utf-8-sig") for line in fh)) - 1
        elif path.suffix == ".csv":
            with path.open(encoding="utf-8-sig", newline="") as fh:
                total += sum(1 for _ in csv.reader(fh)) - 1
    return total


def _counts(path: Path) -> dict[str, int]:
    conn = sqlite3.connect(path)
    try:
        return {"submissions": conn.execute("SELECT count(*) FROM submissions").fetchone()[0],
                "answers": conn.execute("SELECT count(*) FROM answers").fetchone()[0]}
    finally:
        conn.close()


def _child(job: str, url: str, work: Path, n: int = 0) -> dict[str, Any]:
    out = work / (job if n == 0 else f"{job}.{n}")
    out.mkdir()
    proc = subprocess.run([sys.executable, "-m", "benchmarks.export_bench", "--job", job,
                           "--url", url, "--out", str(out)], capture_output=True, text=True,
                          check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"job {job} failed:\n{proc.stderr}")
    shutil.rmtree(out)  # measured; the next job gets the disk space back
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--submissions", type=int, default=100_000)
    ap.add_argument("--jobs", default=",".join(JOBS), help="comma-separated subset of " +
                    ", ".join(JOBS))
    ap.add_argument("--keep", help="work in this new directory and keep it (database, files)")
    ap.add_argument("--db", help="reuse this database seeded by an earlier --keep run")
    ap.add_argument("--repeat", type=int, default=1,
                    help="run each job this many times; report the best time and the highest "
                    "peak RSS (the machine may be shared)")
    ap.add_argument("--job", help=argparse.SUPPRESS)
    ap.add_argument("--url", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.job:
        print(json.dumps(run_job(args.job, args.url, Path(args.out))))
        return
    jobs = [j.strip() for j in args.jobs.split(",") if j.strip()]
    unknown = set(jobs) - set(JOBS)
    if unknown:
        ap.error(f"--jobs: unknown {sorted(unknown)}")
    with contextlib.ExitStack() as stack:
        if args.keep:
            work = Path(args.keep)
            work.mkdir(parents=True, exist_ok=False)
        else:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        db_path = Path(args.db) if args.db else work / "bench.db"
        url = f"sqlite+aiosqlite:///{db_path}"
        if args.db:
            counts = _counts(db_path)
            print(f"reusing {db_path}: {counts['submissions']:,} submissions, "
                  f"{counts['answers']:,} answers")
        else:
            t0 = time.perf_counter()
            counts = seed(url, args.submissions)
            seeded = time.perf_counter() - t0
            db_mb = db_path.stat().st_size / 2**20
            print(f"seeded {counts['submissions']:,} submissions, {counts['answers']:,} "
                  f"answers in {seeded:.0f} s (SQLite file {db_mb:,.0f} MB)")
        results = []
        for job in jobs:
            runs = [_child(job, url, work, n) for n in range(args.repeat)]
            best = min(runs, key=lambda r: r["seconds"])
            best["peak_rss_mb"] = max(r["peak_rss_mb"] for r in runs)
            best["all_seconds"] = [r["seconds"] for r in runs]
            results.append(best)
        base = next((r for r in results if r["job"] == "baseline"), None)
        print(f"\n{'job':<12} {'seconds':>8} {'× baseline':>10} {'peak RSS MB':>11} "
              f"{'rows':>10} {'MB written':>10}")
        for r in results:
            ratio = f"{r['seconds'] / base['seconds']:.2f}" if base else "-"
            rows = r["rows"] if isinstance(r["rows"], int) else sum(r["rows"].values())
            print(f"{r['job']:<12} {r['seconds']:>8.1f} {ratio:>10} {r['peak_rss_mb']:>11.0f} "
                  f"{rows:>10,} {r['bytes'] / 2**20:>10.1f}")
        floor = min(r["start_rss_mb"] for r in results)
        print(f"\n(RSS after imports, before any work: {floor:.0f} MB; each job runs in its "
              "own process; export jobs include loading the questionnaire and the six "
              "catalogs)")
        if args.repeat > 1:
            print("runs (s): " + "; ".join(
                f"{r['job']} " + " ".join(f"{x:.1f}" for x in r["all_seconds"])
                for r in results))
        if args.keep:
            print(f"kept in {work}")


if __name__ == "__main__":
    main()
