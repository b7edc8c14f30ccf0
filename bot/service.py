"""The unit of work: lock the respondent, run the engine, persist everything in one transaction.

Turns are committed in small groups by a writer task (group commit): each turn's answers, state,
events and outbox rows are written in the same transaction as its inbound record, and the
caller gets the replies only after that transaction has committed. One durable commit then
serves every turn that arrived while the previous one was being written.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import secrets
import sys
import traceback
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from bot.engine import Engine, Turn, awaiting, split_slot
from bot.language import LanguageDetector
from bot.locks import KeyedLocks
from bot.messages import Inbound, Reply
from bot.outbox import OutboxItem
from bot.spool import Spool
from storage import repository as repo
from storage.db import Database

logger = logging.getLogger(__name__)
_REF_ALPHABET = "23456789ABCDEFGHJKMNPQRSTVWXYZ"  # no 0/O, 1/I/L: read aloud and typed safely
# Events kept in the audit log; answers have their own table.
_LOGGED_EVENTS = frozenset({"started", "language", "submitted", "amend", "cancelled", "resumed",
                            "invalid", "stale", "delegate"})
TurnFn = Callable[[Engine, dict, Inbound, datetime, Any], Turn]


def utc_now() -> datetime:
    return datetime.now(UTC)


def new_reference() -> str:
    return "CB-" + "".join(secrets.choice(_REF_ALPHABET) for _ in range(7))


def reply_to_payload(reply: Reply) -> dict[str, Any]:
    payload = {"text": reply.text, "kind": reply.kind, "language": reply.language,
               "question": reply.question, "slot": reply.slot, "multi": reply.multi,
               "progress": reply.progress,
               "choices": [[c.code, c.label, c.selected] for c in reply.choices]}
    if reply.extra:
        payload.update(reply.extra)
    return payload


@dataclass(slots=True)
class TurnResult:
    replies: list[Reply] = field(default_factory=list)
    awaiting: str | None = None
    duplicate: bool = False
    failed: bool = False
    respondent_id: int | None = None
    submission_id: int | None = None
    outbox: list[OutboxItem] = field(default_factory=list)
    state: dict[str, Any] | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
    kept: bool = True  # False: the message could be stored nowhere (the reply says so)

    @property
    def outbox_ids(self) -> list[int]:
        return [item.id for item in self.outbox]


@dataclass(slots=True)
class _Job:
    inbound: Inbound
    language: str | None
    explicit: bool
    prefill: dict[str, Any] | None
    turn_fn: TurnFn | None
    future: asyncio.Future


@dataclass(slots=True)
class _Work:
    """What one turn will write, gathered before the batch's statements run."""

    job: _Job
    respondent_id: int
    submission_id: int
    turn: Turn | None = None
    error: str | None = None
    replies: list[Reply] = field(default_factory=list)


OutboxListener = Callable[[list[OutboxItem]], None]


class ConversationService:
    """Inbound message in, replies out; nothing is sent before the turn is committed."""

    def __init__(self, db: Database, engines: dict[str, Engine], default_questionnaire: str,
                 detector: LanguageDetector, *, clock: Callable[[], datetime] = utc_now,
                 reference_factory: Callable[[], str] = new_reference,
                 inline_channels: frozenset[str] = frozenset({"console"}),
                 writers: int | None = None, max_batch: int = 64,
                 spool: Spool | None = None) -> None:
        self.db = db
        self.spool = spool
        self.engines = engines
        self.default_questionnaire = default_questionnaire
        self.detector = detector
        self.clock = clock
        self.new_reference = reference_factory
        # Channels whose replies the caller prints right after commit (the console).
        self.inline_channels = inline_channels
        self.locks = KeyedLocks()
        self.max_batch = max_batch
        # SQLite has a single writer; PostgreSQL takes several batches at once.
        self.writers = writers or (1 if db.is_sqlite else 4)
        self._queue: asyncio.Queue[_Job] | None = None
        self._tasks: list[asyncio.Task] = []
        self._listeners: list[OutboxListener] = []

    def on_outbox(self, listener: OutboxListener) -> None:
        """Called after each commit with the turn's new outbox rows (hands them to senders)."""
        self._listeners.append(listener)

    def engine_for(self, state: dict[str, Any] | None) -> Engine:
        qid = state["questionnaire"] if state else self.default_questionnaire
        return self.engines.get(qid) or self.engines[self.default_questionnaire]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        self._queue = None

    async def handle(self, inbound: Inbound, *, language: str | None = None,
                     explicit_language: bool = False, prefill: dict[str, Any] | None = None,
                     turn_fn: TurnFn | None = None) -> TurnResult:
        """Process one inbound message exactly once; bad input never raises."""
        async with self.locks.hold((inbound.channel, inbound.user_id)):
            future = asyncio.get_running_loop().create_future()
            self._submit(_Job(inbound, language, explicit_language, prefill, turn_fn, future))
            result: TurnResult = await future
        if result.outbox and inbound.channel not in self.inline_channels:
            for listener in self._listeners:
                listener(result.outbox)
        return result

    def _submit(self, job: _Job) -> None:
        if self._queue is None:
            self._queue = asyncio.Queue()
            self._tasks = [asyncio.create_task(self._writer(), name=f"turn-writer-{i}")
                           for i in range(self.writers)]
        self._queue.put_nowait(job)

    async def _writer(self) -> None:
        queue = self._queue
        assert queue is not None
        while True:
            batch = [await queue.get()]
            while len(batch) < self.max_batch and not queue.empty():
                batch.append(queue.get_nowait())
            try:
                results: list[Any] = await self._run_batch(batch, check_duplicates=False)
            except IntegrityError:  # a redelivered message: find it with the careful path
                results = await self._run_batch(batch, check_duplicates=True)
            except Exception:
                if len(batch) == 1:
                    results = [await self._fail(batch[0])]
                else:  # find the culprit: each turn alone, so the others still commit
                    logger.exception("batch of %d failed; retrying turns one by one", len(batch))
                    results = []
                    for job in batch:
                        try:
                            results.append((await self._run_batch([job]))[0])
                        except Exception:
                            results.append(await self._fail(job))
            for job, result in zip(batch, results, strict=True):
                if not job.future.done():
                    job.future.set_result(result)

    async def _fail(self, job: _Job) -> TurnResult:
        """The database refused the turn: keep the message and the reason, answer honestly."""
        logger.exception("turn failed for %s/%s", job.inbound.channel, job.inbound.user_id)
        reason = "".join(traceback.format_exception_only(*sys.exc_info()[:2])).strip()[:2000]
        kept = await self._record_failure(job.inbound, reason)
        tr = self.engine_for(None).tr
        lang = job.language if job.language in tr.languages else "en"
        # "Kept" only when it is: in the database, or in the spool that the next start replays.
        text = tr.t(lang, "error_internal" if kept else "error_not_saved")
        # Nothing could be written, so this reply is not in the outbox: the caller shows it.
        return TurnResult([Reply(text, "error", lang)], failed=True, kept=kept)

    # -- one batch, one transaction -------------------------------------------------------------

    async def _run_batch(self, batch: list[_Job], check_duplicates: bool = True
                         ) -> list[TurnResult]:
        """One transaction for the batch. Without the duplicate check, a redelivered message
        makes the inbound insert fail on its unique key and the caller retries with it."""
        return await self.db.transaction(self._process_batch, batch, check_duplicates,
                                         self.clock())

    def _process_batch(self, conn: Connection, batch: list[_Job], check_duplicates: bool,
                       now: datetime) -> list[TurnResult]:
        results: list[TurnResult | None] = [None] * len(batch)
        live = self._drop_duplicates(conn, batch, results) if check_duplicates else batch
        works = self._load(conn, live, now)
        for work in works:
            self._run_engine(work, now)
        self._write(conn, works, now)
        outbox_ids = self._write_outbox(conn, works, now)
        for work, ids in zip(works, outbox_ids, strict=True):
            index = batch.index(work.job)
            turn = work.turn
            if turn is None:
                results[index] = TurnResult(work.replies, None, False, True, work.respondent_id,
                                            work.submission_id, ids)
            else:
                results[index] = TurnResult(turn.replies, awaiting(turn.state), False, False,
                                            work.respondent_id, work.submission_id, ids,
                                            turn.state, turn.events)
        return [r or TurnResult(duplicate=True) for r in results]

    def _drop_duplicates(self, conn: Connection, batch: list[_Job],
                               results: list) -> list[_Job]:
        by_channel: dict[str, list[str]] = defaultdict(list)
        for job in batch:
            by_channel[job.inbound.channel].append(job.inbound.message_id)
        seen: set[tuple[str, str]] = set()
        for channel, ids in by_channel.items():
            seen |= {(channel, mid) for mid in repo.existing_inbound(conn, channel, ids)}
        live = []
        for i, job in enumerate(batch):
            key = (job.inbound.channel, job.inbound.message_id)
            if key in seen:
                results[i] = TurnResult(duplicate=True)
            else:
                seen.add(key)
                live.append(job)
        return live

    def _load(self, conn: Connection, jobs: list[_Job], now: datetime) -> list[_Work]:
        by_channel: dict[str, list[str]] = defaultdict(list)
        for job in jobs:
            by_channel[job.inbound.channel].append(job.inbound.user_id)
        rows: dict[tuple[str, str], Any] = {}
        for channel, users in by_channel.items():
            found = repo.load_respondents(conn, channel, users, lock=True)
            rows.update({(channel, user): row for user, row in found.items()})
        works = []
        for job in jobs:
            ib = job.inbound
            row = rows.get((ib.channel, ib.user_id))
            if row is not None:
                work = _Work(job, row.id, row.submission_id)
                work.turn = Turn(row.state)  # placeholder until the engine runs
            else:
                engine = self.engine_for(None)
                state = engine.new_state(ref=self.new_reference(), language=job.language,
                                         explicit=job.explicit, prefill=job.prefill)
                rid = repo.create_respondent(conn, channel=ib.channel, user_id=ib.user_id,
                                                   display_name=ib.display_name, state=state,
                                                   now=now)
                sid = repo.create_submission(conn, respondent_id=rid, state=state,
                                                   channel=ib.channel, now=now)
                if job.prefill:
                    repo.upsert_answers(conn, sid, [(k, 0, v) for k, v in
                                                          job.prefill.items()], now=now,
                                              message_id=ib.message_id)
                work = _Work(job, rid, sid)
                work.turn = Turn(state)
            works.append(work)
        return works

    def _run_engine(self, work: _Work, now: datetime) -> None:
        job, state = work.job, work.turn.state  # type: ignore[union-attr]
        engine = self.engine_for(state)
        detection = None
        if (job.inbound.kind == "text" and not state.get("lang_explicit")
                and state["phase"] in ("new", "language")):
            detection = self.detector.detect(job.inbound.text)
        try:
            work.turn = (job.turn_fn or _default_turn)(engine, state, job.inbound, now,
                                                       detection)
        except Exception as exc:  # a bug must not lose the message or block the batch
            logger.exception("engine failed on %s/%s", job.inbound.channel,
                             job.inbound.message_id)
            work.turn = None
            work.error = "".join(traceback.format_exception_only(type(exc), exc)).strip()
            lang = state.get("lang") or "en"
            text = engine.tr.t(lang, "error_internal")
            work.replies = [Reply(text, "error", lang)]

    def _write(self, conn: Connection, works: list[_Work], now: datetime) -> None:
        inbound_rows, state_rows, answer_rows, touched, event_rows = [], [], [], [], []
        for work in works:
            ib = work.job.inbound
            inbound_rows.append({
                "channel": ib.channel, "channel_message_id": ib.message_id,
                "channel_user_id": ib.user_id, "respondent_id": work.respondent_id,
                "kind": ib.kind, "payload": ib.raw or ib.text,
                "status": "failed" if work.turn is None else "processed",
                "reason": work.error, "received_at": now})
            if work.turn is None:
                continue
            work.submission_id = self._apply_events(conn, work, answer_rows, touched,
                                                          event_rows, now)
            state = work.turn.state
            state_rows.append({"rid": work.respondent_id, "state": state,
                               "language": state.get("lang"), "sid": work.submission_id,
                               "now": now})
        repo.insert_inbound_many(conn, inbound_rows)
        repo.upsert_answer_rows(conn, answer_rows)
        repo.touch_submissions(conn, touched)
        repo.insert_events(conn, event_rows)
        repo.save_states(conn, state_rows)

    def _apply_events(self, conn: Connection, work: _Work, answer_rows: list,
                            touched: list, event_rows: list, now: datetime) -> int:
        turn, sid, rid = work.turn, work.submission_id, work.respondent_id
        assert turn is not None
        message_id = work.job.inbound.message_id
        upserts: dict[tuple[str, int], Any] = {}
        removed: set[tuple[str, int]] = set()
        changes: dict[str, Any] = {}
        answers_changed = False
        for ev in turn.events:
            kind = ev["type"]
            answers_changed |= kind in ("answer", "answer_removed")
            if kind == "answer":
                key = (ev["question"], ev["repeat"] or 0)
                upserts[key] = ev["value"]
                removed.discard(key)
            elif kind == "answer_removed":
                key = (ev["question"], ev["repeat"] or 0)
                upserts.pop(key, None)
                removed.add(key)
            elif kind == "submitted":
                changes.update(status="submitted", submitted_at=now)
            elif kind == "cancelled":
                changes.update(status="cancelled")
            elif kind == "resumed":
                changes.update(status="draft")
            elif kind == "language":
                changes.update(language=ev["language"])
            elif kind == "amend":
                # A new version: the submitted row and its answers stay as they were.
                self._flush_slots(conn, sid, upserts, removed, answer_rows, now,
                                        message_id)
                sid = repo.create_submission(conn, respondent_id=rid, state=turn.state,
                                                   channel=work.job.inbound.channel, now=now,
                                                   supersedes_id=sid)
                for key, value in turn.state["answers"].items():
                    qid, rep = split_slot(key)
                    upserts[(qid, rep or 0)] = value
            if kind in _LOGGED_EVENTS:
                event_rows.append({"respondent_id": rid, "submission_id": sid, "type": kind,
                                   "data": ev, "created_at": now})
        self._flush_slots(conn, sid, upserts, removed, answer_rows, now, message_id)
        if changes:
            repo.update_submission(conn, sid, updated_at=now, **changes)
        elif answers_changed:
            touched.append({"sid": sid, "now": now})
        return sid

    def _flush_slots(self, conn: Connection, sid: int, upserts: dict, removed: set,
                           answer_rows: list, now: datetime, message_id: str) -> None:
        if removed:
            repo.delete_answers(conn, sid, removed)
        answer_rows.extend(repo.answer_row(sid, q, r, v, now, message_id)
                           for (q, r), v in upserts.items())
        upserts.clear()
        removed.clear()

    def _write_outbox(self, conn: Connection, works: list[_Work],
                      now: datetime) -> list[list[OutboxItem]]:
        rows, owners = [], []
        for i, work in enumerate(works):
            ib = work.job.inbound
            inline = ib.channel in self.inline_channels
            replies = work.turn.replies if work.turn is not None else work.replies
            for reply in replies:
                rows.append({"channel": ib.channel, "respondent_id": work.respondent_id,
                             "address": ib.user_id, "payload": reply_to_payload(reply),
                             "status": "sent" if inline else "pending", "attempts": 0,
                             "created_at": now, "sent_at": now if inline else None})
                owners.append(i)
        ids = repo.insert_outbox(conn, rows)
        per_work: list[list[OutboxItem]] = [[] for _ in works]
        for owner, oid, row in zip(owners, ids, rows, strict=True):
            per_work[owner].append(OutboxItem(oid, row["channel"], row["address"],
                                              row["payload"], row["respondent_id"]))
        return per_work

    def add_outbox(self, conn: Connection, items: list[dict[str, Any]],
                   now: datetime) -> list[OutboxItem]:
        """Outgoing messages that are not replies to a turn (invitations, notices)."""
        rows = [{"channel": i["channel"], "respondent_id": i.get("respondent_id"),
                 "address": i["address"], "payload": i["payload"], "status": "pending",
                 "attempts": 0, "created_at": now} for i in items]
        ids = repo.insert_outbox(conn, rows)
        return [OutboxItem(oid, r["channel"], r["address"], r["payload"], r["respondent_id"])
                for oid, r in zip(ids, rows, strict=True)]

    async def send_later(self, items: list[dict[str, Any]]) -> list[OutboxItem]:
        """Commit messages to the outbox, then hand them to the channel senders."""
        created = await self.db.transaction(self.add_outbox, items, self.clock())
        for listener in self._listeners:
            listener(created)
        return created

    # -- messages that never reach the engine ---------------------------------------------------

    async def _record_failure(self, inbound: Inbound, reason: str) -> bool:
        """Keep the message and the reason when a turn could not be committed.

        True when it is kept: in the database, else in the spool (replayed at next start).
        """
        return await self._keep(channel=inbound.channel, message_id=inbound.message_id,
                                user_id=inbound.user_id, kind=inbound.kind,
                                payload=inbound.raw or inbound.text, status="failed",
                                reason=reason)

    async def record_unprocessed(self, *, channel: str, message_id: str, user_id: str | None,
                                 kind: str, payload: str, status: str, reason: str) -> bool:
        """Keep a message that never reaches the engine (auto-reply, bounce, group chat…).

        Returns False when that message was recorded before (a duplicate delivery). Raises
        only when neither the database nor the spool could keep it.
        """
        record = {"channel": channel, "message_id": message_id, "user_id": user_id,
                  "kind": kind, "payload": payload, "status": status, "reason": reason}
        try:
            found = await self.db.transaction(functools.partial(
                repo.insert_inbound, **record, now=self.clock()))
        except Exception:
            if await self._spool(record):
                return True
            raise
        return found is not None

    async def _keep(self, **record: Any) -> bool:
        try:
            await self.db.transaction(functools.partial(repo.insert_inbound, **record,
                                                        now=self.clock()))
            return True
        except Exception:
            logger.exception("could not record failed inbound message %s", record["message_id"])
        return await self._spool(record)

    async def _spool(self, record: dict[str, Any]) -> bool:
        if self.spool is None:
            return False
        record = {**record, "received_at": self.clock().isoformat()}
        kept = await self.spool.append_async(record)
        if kept:
            logger.warning("%s message %s kept in the spool %s until the database takes it",
                           record["channel"], record["message_id"], self.spool.path)
        return kept

    async def replay_spool(self) -> int:
        """Store the messages a previous run could only keep in the spool."""
        if self.spool is None:
            return 0

        async def keep(record: dict[str, Any]) -> None:
            received = datetime.fromisoformat(record.pop("received_at"))
            record["reason"] = (f"{record.get('reason') or ''} [the database refused it at "
                                f"{received:%Y-%m-%d %H:%M:%S} UTC; kept in the spool]").strip()
            await self.db.transaction(functools.partial(repo.insert_inbound, **record,
                                                        now=received))

        return await self.spool.replay(keep)


def _default_turn(engine: Engine, state: dict, inbound: Inbound, now: datetime,
                  detection: Any) -> Turn:
    return engine.handle(state, inbound, now, detection)
