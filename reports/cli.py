"""`capbot export` and `capbot stats`: options checked, the database opened, exit codes."""

from __future__ import annotations

import argparse
import gc
import json
import logging
import sys
from dataclasses import replace

from sqlalchemy.exc import SQLAlchemyError

from bot.config import Settings
from bot.i18n import LANGUAGES
from reports.csvfiles import check_destination, export_to
from reports.options import ExportOptionError, ExportOptions
from reports.stats import collect_stats, format_stats

logger = logging.getLogger(__name__)


def tune_gc_for_batch() -> None:
    """For a one-shot export process: what start-up loaded (catalogs, country names,
    SQLAlchemy) is moved out of the collector's sight, and young collections are made rarer, so
    that they seldom find rows of the batch being built still alive. Reference cycles are still
    collected; the bot's long-running process does not call this."""
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)


def _fail(command: str, message: str, code: int) -> int:
    print(f"capbot {command}: {message}", file=sys.stderr)
    return code


async def run_export(settings: Settings, args: argparse.Namespace) -> int:
    """`capbot export`: exit 0 on success, 2 on bad input (one line naming the option), 1 when
    the export itself fails (nothing is left under the final name)."""
    from bot.app import load_content
    from storage.db import create_engine, upgrade

    try:
        options = ExportOptions.parse(
            status=args.status, since=args.since, until=args.until, channel=args.channel,
            country=args.country, questionnaire=args.questionnaire, lang=args.lang,
            split_multi=args.split_multi)
        check_destination(args.out)
        questionnaires, default, translations = load_content(settings)
        if options.questionnaire is None:
            options = replace(options, questionnaire=default.id)
        options.pick_questionnaire(questionnaires)
    except ExportOptionError as exc:
        return _fail("export", str(exc), 2)
    tune_gc_for_batch()
    db = create_engine(settings.database_url)
    try:
        await upgrade(db)
        summary = await export_to(db, questionnaires, translations, options, args.out)
    except ExportOptionError as exc:
        return _fail("export", str(exc), 2)
    except (SQLAlchemyError, OSError) as exc:
        logger.debug("export failed", exc_info=True)
        return _fail("export", f"failed: {' '.join(str(exc).split())[:300]}", 1)
    finally:
        await db.dispose()
    print(summary.describe())
    return 0


async def run_stats(settings: Settings, args: argparse.Namespace) -> int:
    """`capbot stats [--json] [--lang CODE] [--questionnaire ID]`."""
    from bot.app import load_content
    from storage.db import create_engine, upgrade

    lang = (getattr(args, "lang", None) or "en").lower()
    if lang not in LANGUAGES:
        return _fail("stats", f"--lang: unknown language {lang!r} "
                              f"(choose {', '.join(LANGUAGES)})", 2)
    questionnaires, default, translations = load_content(settings)
    wanted = getattr(args, "questionnaire", None)
    try:
        qn = ExportOptions(questionnaire=wanted or default.id).pick_questionnaire(
            questionnaires)
    except ExportOptionError as exc:
        return _fail("stats", str(exc), 2)
    db = create_engine(settings.database_url)
    try:
        await upgrade(db)
        stats = await collect_stats(db, qn, translations)
    except SQLAlchemyError as exc:
        return _fail("stats", f"failed: {' '.join(str(exc).split())[:300]}", 1)
    finally:
        await db.dispose()
    if args.json:
        print(json.dumps(stats, ensure_ascii=False, indent=2))
    else:
        print(format_stats(stats, lang))
    return 0
