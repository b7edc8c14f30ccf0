"""`capbot invite CONTACTS.csv [--questionnaire ID] [--deadline YYYY-MM-DD] [--dry-run]
[--resend]`: read the contacts, report the bad rows, invite the others and send the mails
from this process (a progress bar on a terminal), then say what was done.

Run again, it sends nothing new (an invitation exists once per round and address, and its
mail is queued once); interrupted, the next run sends what was left; a second run at the
same time waits for the first one's batches and finds them invited (storage/rounds.py).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from dataclasses import dataclass
from datetime import date

from bot.app import build_app
from bot.config import Settings
from bot.contacts import BadRow, Contact, ContactsError, read_contacts
from bot.invitations import Invitations, Planned, RunReport
from storage import rounds as store


@dataclass(frozen=True, slots=True)
class ContactsFile:
    path: str
    contacts: list[Contact]
    bad: list[BadRow]


VERBS = {store.QUEUED: "invite", store.RESENT: "send again to",
         store.ALREADY: "already invited, not sent again:",
         store.WAITING: "already queued, still waiting to be sent:"}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("invite", help="invite the contacts of a CSV file to a reporting round "
                       "by email (columns: email, name, organization, country, language, "
                       "optional org_type)")
    p.add_argument("contacts", help="the contacts file (CSV: UTF-8, UTF-16 or Windows-1252; "
                   "comma-, semicolon- or tab-separated)")
    p.add_argument("--questionnaire", help="questionnaire id (default: the default one)")
    p.add_argument("--deadline", type=_day, help="the round's deadline, YYYY-MM-DD (default: "
                   "the latest round's, to add contacts to it)")
    p.add_argument("--dry-run", action="store_true",
                   help="show who would be invited; write and send nothing")
    p.add_argument("--resend", action="store_true",
                   help="send the invitation again to contacts invited before")


def _day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date YYYY-MM-DD: {text!r}") from None


async def run_invite(settings: Settings, args: argparse.Namespace) -> int:
    try:
        good, bad = read_contacts(args.contacts)
    except ContactsError as exc:
        print(f"capbot: {args.contacts}:{exc.line}: {exc.problem}; nothing was sent",
              file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"capbot: {args.contacts}: {exc.strerror or exc}; nothing was sent",
              file=sys.stderr)
        return 2
    contacts = ContactsFile(str(args.contacts), good, bad)
    missing = [name for name, value in (("CAPBOT_SECRET_KEY", settings.secret_key),
                                        ("CAPBOT_EMAIL_FROM", settings.email_from))
               if not value]
    if missing:
        print(f"capbot: invitations need {' and '.join(missing)}; nothing was sent",
              file=sys.stderr)
        return 2
    _report_bad(contacts)
    app = await build_app(settings)
    try:
        qid = args.questionnaire or app.questionnaire.id
        if qid not in app.engines:
            print(f"capbot: --questionnaire: unknown questionnaire {qid!r} (known: "
                  f"{', '.join(sorted(app.engines))}); nothing was sent", file=sys.stderr)
            return 2
        assert settings.secret_key and settings.email_from
        invitations = Invitations(
            app.database, app.engines[qid], app.translations,
            secret=settings.secret_key.encode("utf-8"), email_from=settings.email_from,
            bot_username=settings.telegram_bot_username,
            new_reference=app.service.new_reference)
        if args.deadline is None:  # more contacts for the round under way
            args.deadline = await invitations.current_deadline()
            if args.deadline is None:
                print("capbot: --deadline YYYY-MM-DD is needed for a new round (the "
                      "invitation states it, reminders count down to it); nothing was sent",
                      file=sys.stderr)
                return 2
        where = f"{qid}, deadline {args.deadline}"
        if args.dry_run:
            round_id, planned = await invitations.plan(contacts.contacts, args.deadline,
                                                       resend=args.resend)
            _print_plan(planned, where, round_id, len(contacts.bad))
            return 0
        return await _send(app, invitations, contacts, args, where)
    finally:
        await app.close()


def _report_bad(contacts: ContactsFile) -> None:
    for bad in contacts.bad:
        print(f"{contacts.path}:{bad.line}: {bad.reason}; skipped", file=sys.stderr)


def _print_plan(planned: list[Planned], where: str, round_id: int | None, bad: int) -> None:
    for p in planned:
        c = p.contact
        print(f"would {VERBS[p.action]} {c.email} ({c.language}, {c.country or '-'}, "
              f"{c.name or '-'})")
    would = sum(p.action in (store.QUEUED, store.RESENT) for p in planned)
    known = "a new round" if round_id is None else f"round {round_id}"
    print(f"dry run: {would} invitations would be sent ({known}: {where}); "
          f"{len(planned) - would} contacts invited before; {bad} bad rows skipped; "
          "nothing was written or sent")


async def _send(app, invitations: Invitations, contacts: ContactsFile,
                args: argparse.Namespace, where: str) -> int:
    from handlers.courier import Courier

    async with Courier(app) as courier:
        if "email" not in courier.channels:
            print("capbot: no email channel configured here (CAPBOT_SMTP_HOST, "
                  "CAPBOT_IMAP_HOST…): the invitations are queued and `capbot serve` sends "
                  "them", file=sys.stderr)
        bar = _Bar(len(contacts.contacts))
        with bar:
            report = await invitations.queue(
                contacts.contacts, args.deadline, resend=args.resend,
                publish=courier.enqueue, on_batch=bar.queued)
            book = courier.invitations
            waiting = asyncio.ensure_future(courier.wait_idle())
            while not waiting.done():
                bar.update(book.sent if book else 0)
                await asyncio.wait([waiting], timeout=0.3)
            await waiting
            if book is not None:
                await book.flush()
                bar.update(book.sent)
        sent_here = book.sent if book else 0
    await invitations.settle()
    states = await app.database.transaction(store.outbox_states,
                                            [r.id for r in report.rows])
    _summary(report, contacts, where, sent_here, states)
    return 0


def _summary(report: RunReport, contacts: ContactsFile, where: str, sent_here: int,
             states: dict[str, int]) -> None:
    counts = report.counts
    for o in report.outcomes:
        if o.action in (store.ALREADY, store.WAITING):
            print(f"{VERBS[o.action]} {o.email}")
    queued = counts[store.QUEUED] + counts[store.RESENT]
    lines = [f"{queued} invitations queued (round {report.round_id}: {where}): "
             f"{states.get('sent', 0)} sent, {states.get('failed', 0)} refused by the mail "
             f"server, {states.get('pending', 0)} still to send"]
    if counts[store.RESENT]:
        lines.append(f"  {counts[store.RESENT]} of them sent again (--resend)")
    earlier = sent_here - states.get("sent", 0)
    if earlier > 0:
        lines.append(f"  and {earlier} left unsent by an earlier run, sent now")
    if counts[store.ALREADY]:
        lines.append(f"{counts[store.ALREADY]} contacts invited before, not sent again "
                     "(--resend sends again)")
    if counts[store.WAITING]:
        lines.append(f"{counts[store.WAITING]} contacts' invitations still waiting to be sent")
    lines.append(f"{len(contacts.bad)} bad rows skipped"
                 + (" (listed above)" if contacts.bad else ""))
    print("\n".join(lines))


class _Bar:
    """A rich progress bar on a terminal (counts and time left); nothing otherwise."""

    def __init__(self, contacts: int) -> None:
        self.total = 0
        self.contacts = contacts
        self._progress = None
        self._task = None

    def __enter__(self) -> _Bar:
        if sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._progress = Progress("{task.description}", BarColumn(), MofNCompleteColumn(),
                                      TimeElapsedColumn(), "left", TimeRemainingColumn(),
                                      console=Console(stderr=True), transient=False)
            self._progress.start()
            self._task = self._progress.add_task("sending invitations", total=None)
        return self

    def queued(self, outcomes: list[store.Outcome]) -> None:
        self.total += sum(o.row is not None for o in outcomes)
        if self._progress is not None:
            self._progress.update(self._task, total=self.total)

    def update(self, sent: int) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=min(sent, self.total or sent),
                                  total=max(self.total, sent))

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()
