"""`capbot remind [--dry-run]`: one reminder run, sent by this process (with a progress bar
on a terminal), then the reminders Telegram refused sent again by email."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections import Counter

from bot.app import build_app
from bot.config import Settings
from bot.reminding import Planned, Reminders, RunReport

REASONS = {
    "submitted": "submitted", "opted_out": "opted out", "undeliverable": "undeliverable",
    "not_invited": "invitation not sent yet", "no_deadline": "round without a deadline",
    "past_deadline": "deadline passed", "max_reached": "all reminders sent",
    "too_soon": "invited or reminded recently",
    "quiet_hours": "night where they are (quiet hours)", "no_address": "no address to write to",
}


async def run_remind(settings: Settings, args: argparse.Namespace) -> int:
    app = await build_app(settings)
    try:
        reminders = Reminders(app.database, app.engines, app.questionnaire.id,
                              app.translations, settings.reminder_policy)
        if args.dry_run:
            planned = await reminders.plan()
            for p in planned:
                if p.due is not None:
                    print(_line(p, "would remind"))
            due = [p for p in planned if p.due is not None]
            print(_summary(len(due), Counter(p.reason for p in planned if p.reason),
                           Counter(p.due.channel for p in due if p.due), dry=True))
            return 0
        from handlers.courier import Courier

        async with Courier(app) as courier:
            reminders.publish = courier.enqueue
            report = await reminders.run()
            await _progress(courier, len(report.outbox))
            report.fallbacks += len(await reminders.fall_back())  # refusals seen just now
            await courier.wait_idle()
            channels = courier.channels
        for p in report.queued:
            print(_line(p, "reminded"))
        print(_summary(len(report.queued), report.skipped, report.by_channel, dry=False,
                       report=report))
        unsent = {c for c in report.by_channel if c not in channels}
        if unsent:
            print(f"no {', '.join(sorted(unsent))} channel configured here: those reminders "
                  "are queued and `capbot serve` sends them", file=sys.stderr)
        return 0
    finally:
        await app.close()


def _line(p: Planned, verb: str) -> str:
    c, due = p.candidate, p.due
    assert due is not None
    return (f"{verb} {c.email} on {due.channel} in {due.language} (reminder {due.number}): "
            f"{p.left} questions left, deadline {c.deadline}")


def _summary(count: int, skipped: Counter, by_channel: Counter, *, dry: bool,
             report: RunReport | None = None) -> str:
    head = f"{count} reminders {'would be sent' if dry else 'sent'}"
    if by_channel:
        head += " (" + ", ".join(f"{n} {ch}" for ch, n in sorted(by_channel.items())) + ")"
    lines = [head]
    if report is not None and report.fallbacks:
        lines.append(f"{report.fallbacks} refused by Telegram (bot blocked), sent by email")
    if report is not None and report.lost_race:
        lines.append(f"{report.lost_race} reminded meanwhile by another run")
    for reason, n in sorted(skipped.items(), key=lambda kv: -kv[1]):
        lines.append(f"  not reminded: {n} {REASONS.get(reason, reason)}")
    return "\n".join(lines)


async def _progress(courier, total: int) -> None:
    """Until the queued reminders are sent; a progress bar when stderr is a terminal."""
    if total == 0 or not sys.stderr.isatty():
        await courier.wait_idle()
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    columns = ("{task.description}", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, transient=True) as bar:
        task = bar.add_task("sending reminders", total=total)
        waiting = asyncio.ensure_future(courier.wait_idle())
        while not waiting.done():
            bar.update(task, completed=min(total, courier.sent))
            await asyncio.wait([waiting], timeout=0.5)
        bar.update(task, completed=total)
