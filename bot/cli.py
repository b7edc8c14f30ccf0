"""The `capbot` command line: serve, chat, export, stats, invite, remind, detect-language, db
upgrade."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import getpass
import logging
import os
import sys

from bot.config import ConfigError, Settings, load_settings
from bot.i18n import LANGUAGES
from bot.logs import configure_logging
from bot.yamlfile import DataFileError
from storage import repository as repo
from storage.db import DatabaseUnavailable

logger = logging.getLogger(__name__)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="capbot", description="Biosafety capacity-building "
                                "questionnaire bot (Telegram, email, console).")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="run every configured channel until SIGTERM/SIGINT")
    chat = sub.add_parser("chat", help="answer the questionnaire in this terminal")
    chat.add_argument("--user", default=None, help="respondent id (resume with the same id)")
    chat.add_argument("--lang", choices=LANGUAGES, default=None, help="language to use")
    chat.add_argument("--json", action="store_true", help="JSON Lines in and out, for scripts")
    exp = sub.add_parser("export", help="write the answers as CSV files (directory or .zip)")
    exp.add_argument("--out", required=True, help="a directory, or a path ending in .zip")
    exp.add_argument("--status", default="submitted",
                     help="submitted (default) | draft | cancelled | all")
    exp.add_argument("--since", help="only submissions updated on or after this date")
    exp.add_argument("--until", help="only submissions updated on or before this date")
    exp.add_argument("--channel", help="console | telegram | email")
    exp.add_argument("--country", help="ISO 3166 code of the respondent's country")
    exp.add_argument("--questionnaire", help="questionnaire id")
    exp.add_argument("--lang", help="add label columns in this language")
    exp.add_argument("--split-multi", action="store_true",
                     help="one 0/1 column per option of each multi-choice question")
    stats = sub.add_parser("stats", help="progress of the reporting round")
    stats.add_argument("--json", action="store_true", help="one JSON document")
    stats.add_argument("--lang", help="labels in this language (default en)")
    stats.add_argument("--questionnaire", help="questionnaire id (default: the default one)")
    remind = sub.add_parser("remind", help="remind invited respondents who have not "
                            "submitted (at most CAPBOT_REMINDER_MAX, CAPBOT_REMINDER_"
                            "INTERVAL_DAYS apart, never in CAPBOT_QUIET_HOURS)")
    remind.add_argument("--dry-run", action="store_true",
                        help="list who would be reminded, and why the others not; send nothing")
    from bot.invite_cli import add_parser as add_invite

    add_invite(sub)
    sub.add_parser("detect-language", help="classify lines of standard input by language")
    box = sub.add_parser("outbox", help="messages waiting to be sent or given up on")
    box_sub = box.add_subparsers(dest="outbox_command", required=True)
    retry = box_sub.add_parser("retry", help="queue the messages given up on again (a "
                               "running `capbot serve` sends them within a minute)")
    retry.add_argument("--channel", help="telegram | email (default: both)")
    retry.add_argument("--unreachable", action="store_true",
                       help="also to recipients marked unreachable (blocked the bot, bounced)")
    db = sub.add_parser("db", help="database maintenance")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    db_sub.add_parser("upgrade", help="apply migrations up to the latest schema")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "detect-language":
        from bot.language import run_detect_language

        return run_detect_language(sys.stdin, sys.stdout)
    try:
        settings = load_settings()
        configure_logging(settings, level=None if args.command == "serve" else "WARNING")
        return asyncio.run(_run(args, settings))
    except (ConfigError, DataFileError) as exc:
        print(f"capbot: {exc}", file=sys.stderr)
        return 2
    except DatabaseUnavailable as exc:  # export and stats open the database themselves
        print(f"capbot: CAPBOT_DATABASE_URL: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # the reader went away (`capbot chat | head`): nothing to say
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - no flush error at exit
        return 0


async def _run(args: argparse.Namespace, settings: Settings) -> int:
    if args.command == "serve":
        from bot.server import serve

        return await serve(settings)
    if args.command == "export":
        from reports.cli import run_export

        return await run_export(settings, args)
    if args.command == "stats":
        from reports.cli import run_stats

        return await run_stats(settings, args)
    if args.command == "invite":
        from bot.invite_cli import run_invite

        return await run_invite(settings, args)
    if args.command == "remind":
        from bot.remind_cli import run_remind

        return await run_remind(settings, args)

    from bot.app import build_app

    app = await build_app(settings)
    try:
        if args.command == "db":
            print("database is at the latest schema", file=sys.stderr)
            return 0
        if args.command == "outbox":
            count = await app.database.transaction(functools.partial(
                repo.retry_failed_outbox, channel=args.channel,
                include_unreachable=args.unreachable))
            print(f"{count} messages queued again", file=sys.stderr)
            return 0
        if args.command == "chat":
            from handlers.console import ConsoleChannel

            user = args.user or getpass.getuser() or "console"
            channel = ConsoleChannel(app.service, user, language=args.lang,
                                     json_mode=args.json)
            return await channel.run(sys.stdin)
    finally:
        await app.close()
    return 2


if __name__ == "__main__":
    sys.exit(main())
