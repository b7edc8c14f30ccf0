"""The unit of work: lock the respondent, run the engine, persist everything in one transaction."""

from __future__ import annotations

import logging
import secrets
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from bot.engine import Engine, Turn, awaiting
from bot.language import LanguageDetector
from bot.locks import KeyedLocks
from bot.messages import Inbound, Reply
from storage import repository as repo

logger = logging.getLogger(__name__)
_REF_ALPHABET = "23456789ABCDEFGHJKMNPQRSTVWXYZ"  # no 0/O, 1/I/L: read aloud and typed safely
# Events kept in the audit log; answers have their own table.
_LOGGED_EVENTS = frozenset({"started", "language", "submitted", "amend", "cancelled", "resumed",
                            "invalid", "stale"})


def utc_now() -> datetime:
    return datetime.now(UTC)


def new_reference() -> str:
    return "CB-" + "".join(secrets.choice(_REF_ALPHABET) for _ in range(7))


def reply_to_payload(reply: Reply) -> dict[str, Any]:
    data = asdict(reply)
    data["choices"] = [[c.code, c.label, c.selected] for c in reply.choices]
    return data


@dataclass(slots=True)
class TurnResult:
    replies: list[Reply] = field(default_factory=list)
    awaiting: str | None = None
    duplicate: bool = False
    respondent_id: int | None = None
    submission_id: int | None = None
    outbox_ids: list[int] = field(default_factory=list)
    state: dict[str, Any] | None = None
    events: list[dict[str, Any]] = field(default_factory=list)


OutboxListener = Callable[[str, list[int]], None]


class ConversationService:
    """Inbound message in, replies out; nothing is sent before the turn is committed."""

    def __init__(self, db: AsyncEngine, engines: dict[str, Engine], default_questionnaire: str,
                 detector: LanguageDetector, *, clock: Callable[[], datetime] = utc_now,
                 reference_factory: Callable[[], str] = new_reference,
                 inline_channels: frozenset[str] = frozenset({"console"})) -> None:
        self.db = db
        self.engines = engines
        self.default_questionnaire = default_questionnaire
        self.detector = detector
        self.clock = clock
        self.new_reference = reference_factory
        # Channels whose replies are delivered by the caller right after commit (console).
        self.inline_channels = inline_channels
        self.locks = KeyedLocks()
        self._listeners: list[OutboxListener] = []

    def on_outbox(self, listener: OutboxListener) -> None:
        """Called after each commit with the new outbox ids of a channel (wakes its sender)."""
        self._listeners.append(listener)

    def engine_for(self, state: dict[str, Any] | None) -> Engine:
        qid = state["questionnaire"] if state else self.default_questionnaire
        return self.engines.get(qid) or self.engines[self.default_questionnaire]

    async def handle(self, inbound: Inbound, *, language: str | None = None,
                     explicit_language: bool = False,
                     prefill: dict[str, Any] | None = None,
                     turn_fn: Callable[[Engine, dict, Inbound, datetime, Any], Turn] | None = None,
                     ) -> TurnResult:
        """Process one inbound message exactly once. Never raises for bad input."""
        async with self.locks.hold((inbound.channel, inbound.user_id)):
            try:
                result = await self._handle_locked(inbound, language, explicit_language,
                                                   prefill, turn_fn)
            except Exception as exc:
                logger.exception("turn failed for %s/%s", inbound.channel, inbound.user_id)
                await self._record_failure(inbound, exc)
                raise
        if result.outbox_ids and inbound.channel not in self.inline_channels:
            for listener in self._listeners:
                listener(inbound.channel, result.outbox_ids)
        return result

    async def _handle_locked(self, inbound: Inbound, language: str | None,
                             explicit_language: bool, prefill: dict[str, Any] | None,
                             turn_fn) -> TurnResult:
        now = self.clock()
        async with self.db.begin() as conn:
            inbound_id = await repo.insert_inbound(
                conn, channel=inbound.channel, message_id=inbound.message_id,
                user_id=inbound.user_id, kind=inbound.kind, payload=inbound.raw or inbound.text,
                status="processed", reason=None, now=now)
            if inbound_id is None:
                return TurnResult(duplicate=True)
            row = await repo.load_respondent(conn, inbound.channel, inbound.user_id, lock=True)
            if row is None:
                engine = self.engine_for(None)
                state = engine.new_state(ref=self.new_reference(), language=language,
                                         explicit=explicit_language, prefill=prefill)
                respondent_id = await repo.create_respondent(
                    conn, channel=inbound.channel, user_id=inbound.user_id,
                    display_name=inbound.display_name, state=state, now=now)
                submission_id = await repo.create_submission(
                    conn, respondent_id=respondent_id, state=state, channel=inbound.channel,
                    now=now)
                if prefill:
                    await repo.upsert_answers(
                        conn, submission_id, [(k, 0, v) for k, v in prefill.items()], now=now,
                        message_id=inbound.message_id)
            else:
                respondent_id, state, submission_id = row.id, row.state, row.submission_id
                engine = self.engine_for(state)
            detection = None
            if (inbound.kind == "text" and not state.get("lang_explicit")
                    and state["phase"] in ("new", "language")):
                detection = self.detector.detect(inbound.text)
            turn = (turn_fn or _default_turn)(engine, state, inbound, now, detection)
            submission_id = await self._persist(conn, turn, respondent_id, submission_id,
                                                inbound, inbound_id, now)
            outbox_ids = await repo.insert_outbox(conn, [
                {"channel": inbound.channel, "respondent_id": respondent_id,
                 "address": inbound.user_id, "payload": reply_to_payload(r),
                 "status": "sent" if inbound.channel in self.inline_channels else "pending",
                 "attempts": 0, "created_at": now,
                 "sent_at": now if inbound.channel in self.inline_channels else None}
                for r in turn.replies])
        return TurnResult(turn.replies, awaiting(turn.state), False, respondent_id,
                          submission_id, outbox_ids, turn.state, turn.events)

    async def _persist(self, conn, turn: Turn, respondent_id: int, submission_id: int,
                       inbound: Inbound, inbound_id: int, now: datetime) -> int:
        state = turn.state
        upserts: dict[tuple[str, int], Any] = {}
        removed: set[tuple[str, int]] = set()
        sub_changes: dict[str, Any] = {}
        logged = []
        for ev in turn.events:
            kind = ev["type"]
            if kind == "answer":
                key = (ev["question"], ev["repeat"] or 0)
                upserts[key] = ev["value"]
                removed.discard(key)
            elif kind == "answer_removed":
                key = (ev["question"], ev["repeat"] or 0)
                upserts.pop(key, None)
                removed.add(key)
            elif kind == "submitted":
                sub_changes.update(status="submitted", submitted_at=now)
            elif kind == "cancelled":
                sub_changes.update(status="cancelled")
            elif kind == "resumed":
                sub_changes.update(status="draft")
            elif kind == "language":
                sub_changes.update(language=ev["language"])
            elif kind == "amend":
                # A new version: the submitted row stays as it was.
                submission_id = await repo.create_submission(
                    conn, respondent_id=respondent_id, state=state, channel=inbound.channel,
                    now=now, supersedes_id=submission_id)
                await repo.upsert_answers(
                    conn, submission_id,
                    [(*_split(k), v) for k, v in state["answers"].items()], now=now,
                    message_id=inbound.message_id)
            if kind in _LOGGED_EVENTS:
                logged.append({"respondent_id": respondent_id, "submission_id": submission_id,
                               "type": kind, "data": ev, "created_at": now})
        if removed:
            await repo.delete_answers(conn, submission_id, removed)
        if upserts:
            await repo.upsert_answers(conn, submission_id,
                                      [(q, r, v) for (q, r), v in upserts.items()], now=now,
                                      message_id=inbound.message_id)
        if upserts or removed or sub_changes:
            await repo.update_submission(conn, submission_id, updated_at=now, **sub_changes)
        await repo.insert_events(conn, logged)
        await repo.save_state(conn, respondent_id, state, submission_id, now)
        return submission_id

    async def _record_failure(self, inbound: Inbound, exc: BaseException) -> None:
        """Keep the message and the reason when a turn could not be processed."""
        reason = "".join(traceback.format_exception_only(type(exc), exc)).strip()[:2000]
        try:
            async with self.db.begin() as conn:
                await repo.insert_inbound(
                    conn, channel=inbound.channel, message_id=inbound.message_id,
                    user_id=inbound.user_id, kind=inbound.kind,
                    payload=inbound.raw or inbound.text, status="failed", reason=reason,
                    now=self.clock())
        except Exception:
            logger.exception("could not record failed inbound message %s", inbound.message_id)

    async def record_unprocessed(self, *, channel: str, message_id: str, user_id: str | None,
                                 kind: str, payload: str, status: str, reason: str) -> bool:
        """Keep a message that never reaches the engine (auto-reply, bounce, group chat…)."""
        async with self.db.begin() as conn:
            found = await repo.insert_inbound(
                conn, channel=channel, message_id=message_id, user_id=user_id, kind=kind,
                payload=payload, status=status, reason=reason, now=self.clock())
        return found is not None


def _default_turn(engine: Engine, state: dict, inbound: Inbound, now: datetime,
                  detection: Any) -> Turn:
    return engine.handle(state, inbound, now, detection)


def _split(key: str) -> tuple[str, int]:
    qid, _, rep = key.partition("@")
    return qid, int(rep) if rep else 0
