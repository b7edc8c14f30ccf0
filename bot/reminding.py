"""Reminder runs: find who is due a reminder (bot/reminders.py), commit each with its outbox
row, hand the rows to the channel senders; send again by email what Telegram refused.

`capbot remind` runs one; `capbot serve` runs one every few minutes when CAPBOT_REMINDERS is
on (`ReminderScheduler`). Two runs at once (a CLI run beside `serve`, two replicas) cannot
remind anyone twice: a reminder is counted in the commit that queues it, and only if the
count is still the one the run read (storage/reminders_store.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from bot import reminders as rules
from bot.engine import Engine, Turn
from bot.i18n import Translations
from bot.outbox import OutboxItem
from bot.reminders import Candidate, Due, Policy
from bot.service import reply_to_payload
from storage import reminders_store as store
from storage.db import Database

logger = logging.getLogger(__name__)

Publish = Callable[[list[OutboxItem]], None]
TELEGRAM, EMAIL = "telegram", "email"
COMMIT_BATCH = 200  # reminders per transaction: one durable commit, not one per person


@dataclass(slots=True)
class Planned:
    candidate: Candidate
    due: Due | None
    reason: str | None  # why not, when due is None
    left: int = 0


@dataclass(slots=True)
class RunReport:
    """What one run did (or, dry, would do)."""

    queued: list[Planned] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)
    lost_race: int = 0  # reminded by another run between our read and our commit
    fallbacks: int = 0  # reminders Telegram refused, queued again by email
    outbox: list[OutboxItem] = field(default_factory=list)

    @property
    def by_channel(self) -> Counter[str]:
        return Counter(p.due.channel for p in self.queued if p.due)


class Reminders:
    """One reporting round's reminders over the database; `publish` hands committed rows to
    the running senders (the CLI's, or `capbot serve`'s dispatchers)."""

    def __init__(self, db: Database, engines: dict[str, Engine], default_questionnaire: str,
                 translations: Translations, policy: Policy, *,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC),
                 publish: Publish | None = None) -> None:
        self.db = db
        self.engines = engines
        self.default_questionnaire = default_questionnaire
        self.tr = translations
        self.policy = policy
        self.clock = clock
        self.publish = publish

    async def plan(self, *, round_id: int | None = None) -> list[Planned]:
        """Every invitation with a verdict: due (where, which reminder), or why not."""
        now = self.clock()
        rows = await self.db.transaction(functools.partial(store.candidates,
                                                           round_id=round_id))
        planned = []
        for row in rows:
            c = _candidate(row)
            reason = rules.why_not(c, self.policy, now)
            due = rules.due(c, self.policy, now) if reason is None else None
            left = rules.questions_left(self._engine(c.state).rules, c.state) if due else 0
            planned.append(Planned(c, due, reason, left))
        return planned

    async def run(self, *, dry_run: bool = False, round_id: int | None = None) -> RunReport:
        report = RunReport()
        if not dry_run:
            report.fallbacks = len(await self.fall_back())
        due: list[Planned] = []
        for p in await self.plan(round_id=round_id):
            if p.due is None:
                report.skipped[p.reason or "?"] += 1
            else:
                due.append(p)
        if dry_run:
            report.queued = due
            return report
        for start in range(0, len(due), COMMIT_BATCH):
            batch = due[start:start + COMMIT_BATCH]
            rows = await self._commit(batch)
            for p, row in zip(batch, rows, strict=True):
                if row is None:
                    report.lost_race += 1
                else:
                    report.queued.append(p)
                    report.outbox.append(row)
            # Sending starts while the next batch commits.
            self._hand_over([row for row in rows if row is not None])
        return report

    async def fall_back(self) -> list[OutboxItem]:
        """Reminders Telegram refused (the person blocked the bot): the same reminder by
        email, unless they submitted, opted out, the deadline passed or it is night there."""
        refused = await self.db.transaction(functools.partial(store.undelivered_reminders,
                                                              channel=TELEGRAM))
        if not refused:
            return []
        now = self.clock()
        by_invitation = {row["invitation_id"]: _candidate(row) for row in
                         await self.db.transaction(store.candidates)}
        created: list[OutboxItem] = []
        for event in refused:
            c = by_invitation.get(event.get("invitation"))
            if c is None:
                continue
            reason = rules.why_not(c, _any_count(self.policy), now)
            target = rules.channel_for(c, avoid=TELEGRAM)
            if reason not in (None, rules.NO_ADDRESS) or target is None:
                continue  # tried again at the next run while it is only night there
            channel, address = target
            lang = rules.language_of(c)
            payload = self._payload(channel, c, lang, event.get("number") or c.reminders_sent)
            row = await self.db.transaction(functools.partial(
                store.record_fallback, event_id=event["event_id"], invitation_id=c.invitation_id,
                channel=channel, address=address, payload=payload,
                respondent_id=c.respondent_id, now=now))
            if row is not None:
                logger.info("reminder %s refused by Telegram: sent again by email",
                            event["event_id"])
                created.append(row)
        self._hand_over(created)
        return created

    async def _commit(self, batch: list[Planned]) -> list[OutboxItem | None]:
        """One transaction for the batch; each reminder still counted only if its
        invitation's count is the one read (else None: another run reminded first)."""
        items = []
        for p in batch:
            # Each prompt is a millisecond or two of CPU: yield between them, or the sends
            # already under way leave late and bunch up against Telegram's per-second count.
            await asyncio.sleep(0)
            c, due = p.candidate, p.due
            assert due is not None
            items.append({"invitation_id": c.invitation_id, "seen_count": c.reminders_sent,
                          "channel": due.channel, "address": due.address,
                          "payload": self._payload(due.channel, c, due.language, due.number),
                          "respondent_id": c.respondent_id})
        return await self.db.transaction(functools.partial(
            store.record_reminders, items=items, now=self.clock()))

    def _hand_over(self, rows: list[OutboxItem]) -> None:
        if rows and self.publish is not None:
            self.publish(rows)

    # -- what a reminder says -------------------------------------------------------------------

    def _engine(self, state: dict[str, Any]) -> Engine:
        qid = (state or {}).get("questionnaire") or self.default_questionnaire
        return self.engines.get(qid) or self.engines[self.default_questionnaire]

    def text(self, c: Candidate, lang: str) -> str:
        assert c.deadline is not None
        engine = self._engine(c.state)
        return rules.reminder_text(self.tr, lang, left=rules.questions_left(engine.rules,
                                                                            c.state),
                                   deadline=c.deadline, started=rules.started(c.state))

    def _payload(self, channel: str, c: Candidate, lang: str, number: int) -> dict[str, Any]:
        meta = {"invitation": c.invitation_id, "number": number}
        if channel == EMAIL:
            return self._mail(c, lang, meta)
        return self._chat(c, lang, meta)

    def _chat(self, c: Candidate, lang: str, meta: dict[str, Any]) -> dict[str, Any]:
        """One Telegram message: the reminder, then the question they stopped at (with its
        buttons) — one message, as Telegram allows about one a second per chat."""
        text = self.text(c, lang)
        question = self._current_question(c.state) if c.state.get("lang") == lang else None
        if question is None:
            payload = {"text": text + "\n" + self.tr.t(lang, "continue_chat", rules.DOMAIN),
                       "kind": "info", "language": lang, "question": None, "slot": None,
                       "multi": False, "progress": None, "choices": []}
        else:
            payload = reply_to_payload(question)
            payload.update(text=f"{text}\n\n{question.text}", progress=None)
        return {**payload, "reminder": meta}

    def _current_question(self, state: dict[str, Any]):
        if state.get("phase") != "asking":
            return None
        engine = self._engine(state)
        turn = Turn({**state, "answers": dict(state.get("answers") or {}),
                     "pending": list(state.get("pending") or [])})
        # The engine's own prompt for where the conversation stands (pure; the copy is
        # thrown away).
        engine._prompt_current(turn)
        asked = [r for r in turn.replies if r.kind == "question"]
        return asked[-1] if asked else None

    def _mail(self, c: Candidate, lang: str, meta: dict[str, Any]) -> dict[str, Any]:
        """The email form with the questions still open, under the reminder; it carries the
        report's reply token (its `ref`), so a reply continues the draft."""
        assert c.deadline is not None
        engine = self._engine(c.state)
        st = c.state if c.state.get("ref") else engine.new_state(ref="", language=lang)
        view_state = {k: st.get(k) for k in ("questionnaire", "ref", "lang", "version",
                                             "phase", "answers")}
        view_state["lang"] = lang
        mid = c.invitation_message_id
        thread = {"message_id": (mid or f"reminder-{c.invitation_id}").strip("<>"),
                  "subject": "", "references": [], "synthesized": mid is None}
        return {"text": "", "kind": "question", "language": lang,
                "ref": st.get("ref") or None, "to": None, "thread": thread,
                "reply": mid is not None, "index": 100 + meta["number"],
                "form": {"show": "form", "state": view_state, "offer_languages": False,
                         "remaining": True},
                "lead": {"subject": rules.subject(self.tr, lang, c.deadline),
                         "paragraphs": [self.text(c, lang),
                                        self.tr.t(lang, "continue_mail", rules.DOMAIN)]},
                "reminder": meta}


def _candidate(row: dict[str, Any]) -> Candidate:
    return Candidate(
        invitation_id=row["invitation_id"], respondent_id=row["respondent_id"],
        round_id=row["round_id"], deadline=row["deadline"],
        invitation_status=row["invitation_status"], language=row["language"],
        email=row["email"], reminders_sent=row["reminders_sent"] or 0,
        last_reminder_at=row["last_reminder_at"], invited_at=row["invited_at"],
        opted_out_at=row["opted_out_at"],
        submitted=row["submitted"], state=row["state"] or {}, country=row["country"],
        last_channel=row["last_channel"], addresses=row["addresses"],
        invitation_message_id=row["message_id"])


def _any_count(policy: Policy) -> Policy:
    """The fallback is the same reminder again: neither the count nor the interval apply."""
    return Policy(max_reminders=10**6, interval=timedelta(0), quiet_start=policy.quiet_start,
                  quiet_end=policy.quiet_end)


class ReminderScheduler:
    """`capbot serve`'s reminder loop: a run every `every` seconds, while this process leads
    the "reminders" job (one replica at a time; `lead` is that job's leadership)."""

    name = "reminders"

    def __init__(self, reminders: Reminders, *, every: float = 300.0) -> None:
        self.reminders = reminders
        self.every = every
        self._task: asyncio.Task | None = None
        self.runs = 0

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="reminders")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def run_once(self) -> RunReport:
        report = await self.reminders.run()
        self.runs += 1
        if report.queued or report.fallbacks:
            logger.info("reminders: %d queued (%s), %d sent again by email",
                        len(report.queued), dict(report.by_channel), report.fallbacks)
        return report

    async def _loop(self) -> None:
        while True:
            try:
                await self.run_once()
            except Exception:  # the next run tries again; nothing is counted unless queued
                logger.exception("reminders: run failed")
            await asyncio.sleep(self.every)
