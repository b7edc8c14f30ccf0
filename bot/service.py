"""The service: lock the respondent, let the store run the turn, hand the replies to senders.

One message's path: the adapter builds an `Inbound` → `handle` takes the respondent's lock,
detects the language when the conversation may need it (outside any transaction) → the store
(`storage.store.TurnStore`) runs `decide` — the engine — inside its group-commit transaction
and commits answers, state, events and outbox rows together → the listeners (each channel's
outbox dispatcher) get the committed rows. Nothing is sent before it is stored.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import secrets
import sys
import traceback
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from bot.engine import Engine, Turn, awaiting, split_slot
from bot.events import EmailRequested
from bot.language import Detection, LanguageDetector, normalize_language_tag
from bot.links import CrossChannel
from bot.locks import KeyedLocks
from bot.messages import Inbound, Reply
from bot.outbox import OutboxItem
from bot.spool import Spool
from bot.turn_display import turn_display
from storage import repository as repo
from storage.db import Database, is_disconnect, is_read_only
from storage.store import Conversation, Decision, Message, TurnRecord, TurnStore

logger = logging.getLogger(__name__)
_REF_ALPHABET = "23456789ABCDEFGHJKMNPQRSTVWXYZ"  # no 0/O, 1/I/L: read aloud and typed safely
# Events kept in the audit log; answers have their own table.
_LOGGED_EVENTS = frozenset({"started", "language", "submitted", "amend", "cancelled", "resumed",
                            "invalid", "stale", "delegate", "opted_out", "email_requested"})
_CHANGES = frozenset({"answer", "answer_removed", "submitted", "cancelled", "resumed",
                      "language", "opted_out"})
Preface = list[tuple[str, dict[str, Any]]]  # (ui catalog key, values): said before the turn
OutboxListener = Callable[[list[OutboxItem]], None]


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


def event_dict(event: Any) -> dict[str, Any]:
    """Events as the store and the audit log take them (typed events know their JSON)."""
    return event if isinstance(event, dict) else event.to_json()


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
    events: list[Any] = field(default_factory=list)
    kept: bool = True  # False: the message could be stored nowhere (the reply says so)

    @property
    def outbox_ids(self) -> list[int]:
        return [item.id for item in self.outbox]


@dataclass(slots=True)
class _Ask:
    """One turn's inputs, and what the engine made of it (filled in by decide)."""

    inbound: Inbound
    language: str | None
    explicit: bool
    prefill: dict[str, Any] | None
    detection: Detection | None
    now: datetime
    preface: Preface = field(default_factory=list)
    turn: Turn | None = None
    replies: list[Reply] = field(default_factory=list)


class ConversationService:
    """Inbound message in, replies out; nothing is sent before the turn is committed."""

    def __init__(self, db: Database, engines: dict[str, Engine], default_questionnaire: str,
                 detector: LanguageDetector, *, clock: Callable[[], datetime] = utc_now,
                 reference_factory: Callable[[], str] = new_reference,
                 writers: int | None = None, max_batch: int = 64,
                 spool: Spool | None = None, disconnect_wait: float = 30.0) -> None:
        self.db = db
        self.engines = engines
        self.default_questionnaire = default_questionnaire
        self.detector = detector
        self.clock = clock
        self.new_reference = reference_factory
        self.spool = spool
        self.disconnect_wait = disconnect_wait  # seconds a turn waits for an unreachable server
        self._disconnected = False
        self.store = TurnStore(db, clock=clock, writers=writers, max_batch=max_batch)
        self.locks = KeyedLocks()
        self._listeners: list[OutboxListener] = []
        # (channel, user) -> may the next text decide the language? A cache: lost, it is read.
        self._detecting: OrderedDict[tuple[str, str], bool] = OrderedDict()
        self.links = CrossChannel(self)  # deep links, /email, opt-out: one person, channels

    def on_outbox(self, listener: OutboxListener) -> None:
        """Called after each commit with the turn's new outbox rows (hands them to senders)."""
        self._listeners.append(listener)

    def engine_for(self, state: dict[str, Any] | None) -> Engine:
        qid = state["questionnaire"] if state else self.default_questionnaire
        return self.engines.get(qid) or self.engines[self.default_questionnaire]

    async def close(self) -> None:
        await self.store.close()

    async def handle(self, inbound: Inbound, *, language: str | None = None,
                     explicit_language: bool = False, prefill: dict[str, Any] | None = None,
                     delivered: bool = False, preface: Preface | None = None) -> TurnResult:
        """Process one inbound message exactly once; bad input never raises.

        `delivered`: the caller shows the replies itself (the console), so they are stored
        as sent and not handed to the listeners. `preface`: notes said before the turn's
        replies, in the conversation's language (a deep link's welcome).
        """
        key = (inbound.channel, inbound.user_id)
        async with self.locks.hold(key):
            inbound = await self.links.with_known_email(inbound)
            detection = await self._detection(inbound, key)
            ask = _Ask(inbound, language, explicit_language, prefill, detection, self.clock(),
                       preface or [])
            message = Message(inbound.channel, inbound.user_id, inbound.message_id,
                              inbound.kind, inbound.raw or inbound.text, inbound.display_name)
            try:
                record = await self._turn(message, ask, delivered)
            except Exception:
                return await self._fail(ask)
            result = self._result(ask, record)
            if result.state is not None:
                self._remember(key, result.state)
        if result.outbox and not delivered:
            for listener in self._listeners:
                listener(result.outbox)
        for event in result.events:
            if isinstance(event, EmailRequested):
                await self.links.send_form_by_email(inbound, result, event.address)
        return result

    async def _turn(self, message: Message, ask: _Ask, delivered: bool) -> TurnRecord:
        """The store's turn; while the database server is unreachable (a restart, a failover)
        the turn waits and is tried again, up to `disconnect_wait` seconds, so that the answer
        is recorded rather than set aside. The message is still the channel's to redeliver
        meanwhile (not confirmed to Telegram, still in the IMAP folder). A refusal by a
        reachable database (a full disk) fails at once; a read-only refusal is tried once
        more, on a fresh connection (the pool's sessions may date from a read-only spell)."""
        waited, delay, fresh = 0.0, 0.2, False
        while True:
            try:
                record = await self.store.turn(message, lambda state: self._decide(ask, state),
                                               delivered=delivered)
            except Exception as exc:
                if is_read_only(exc) and not fresh:
                    fresh = True
                    continue
                if not is_disconnect(exc) or waited >= self.disconnect_wait:
                    raise
                if not self._disconnected:
                    self._disconnected = True
                    logger.warning("the database is unreachable (%s); turns wait for it, up "
                                   "to %.0f s each", str(exc).splitlines()[0][:200],
                                   self.disconnect_wait)
                await asyncio.sleep(delay)
                waited += delay
                delay = min(delay * 2, 5.0)
                continue
            if self._disconnected:
                self._disconnected = False
                logger.warning("the database is reachable again; turns go on")
            return record

    # -- the engine, run by the store inside its transaction --------------------------------

    def _decide(self, ask: _Ask, stored: dict[str, Any] | None) -> Decision:
        engine = self.engine_for(stored)
        start = None
        prefill: list[tuple[str, int, Any]] = []
        if not stored:  # a new respondent, or an invited one with no state yet ({})
            state = engine.new_state(ref=self.new_reference(), language=ask.language,
                                     explicit=ask.explicit, prefill=ask.prefill)
            start = _conversation(state)
            prefill = [(k, 0, v) for k, v in (ask.prefill or {}).items()]
        elif stored.get("phase") == "new":  # prepared (an invitation), never started
            state = stored
            if not state.get("lang") and ask.language:
                state = {**state, "lang": ask.language, "lang_explicit": ask.explicit}
            start = _conversation(state)
        else:
            state = stored
        try:
            turn = engine.handle(state, ask.inbound, ask.now, ask.detection)
        except Exception as exc:  # a bug must not lose the message or block the batch
            logger.exception("engine failed on %s/%s", ask.inbound.channel,
                             ask.inbound.message_id)
            lang = state.get("lang") or "en"
            ask.replies = [Reply(engine.tr.t(lang, "error_internal"), "error", lang)]
            return Decision(None, replies=[reply_to_payload(r) for r in ask.replies],
                            error="".join(traceback.format_exception_only(type(exc), exc))
                            .strip())
        if ask.preface:
            lang = turn.state.get("lang") or normalize_language_tag(
                ask.inbound.language_hint) or "en"
            turn.replies[:0] = [Reply(engine.tr.t(lang, k, **v), "info", lang)
                                for k, v in ask.preface]
        ask.turn, ask.replies = turn, turn.replies
        changes: list[dict[str, Any]] = []
        log: list[dict[str, Any]] = []
        if ask.inbound.kind == "start":  # opening the bot again undoes an opt-out
            changes.append({"type": "opt_in"})
        for event in map(event_dict, turn.events):
            kind = event["type"]
            if kind in _CHANGES:
                changes.append(event)
            elif kind == "amend":
                changes.append({"type": "amend", "conversation": _conversation(turn.state),
                                "answers": [(*_slot(key), value) for key, value in
                                            turn.state["answers"].items()]})
            if kind in _LOGGED_EVENTS:
                log.append(event)
        return Decision(turn.state, changes, log, self._payloads(engine, ask.inbound, turn),
                        start=start, prefill=prefill)

    @staticmethod
    def _payloads(engine: Engine, inbound: Inbound, turn: Turn) -> list[dict[str, Any]]:
        """The turn's replies as outbox payloads, each with the inbound's reply path (the
        channel's own data, e.g. the pressed Telegram message) and, for a chat turn, what the
        turn did as the respondent reads it (bot/turn_display.py): written with the reply, so
        any process sends the row with the same display."""
        path = dict(inbound.reply_path or {})
        display = None if inbound.kind == "form" else turn_display(  # a form shows it all
            engine, turn.state, turn.events)
        payloads = []
        for index, reply in enumerate(turn.replies):
            payload = {**path, **reply_to_payload(reply)}
            if display is not None:
                payload["turn"] = {**display, "first": index == 0}
            payloads.append(payload)
        return payloads

    def _result(self, ask: _Ask, record: TurnRecord) -> TurnResult:
        if record.duplicate:
            return TurnResult(duplicate=True)
        turn, outbox = ask.turn, record.outbox
        if turn is None:  # the engine failed; the message is kept as "failed"
            return TurnResult(ask.replies, None, False, True, record.respondent_id,
                              record.submission_id, outbox)
        return TurnResult(turn.replies, awaiting(turn.state), False, False,
                          record.respondent_id, record.submission_id, outbox, turn.state,
                          turn.events)

    # -- language detection, outside the transaction ----------------------------------------

    async def _detection(self, inbound: Inbound, key: tuple[str, str]) -> Detection | None:
        if inbound.kind != "text":
            return None
        wanted = self._detecting.get(key)
        if wanted is None:  # not in the cache: read the stored state
            rows = await self.db.transaction(functools.partial(
                repo.load_respondents, channel=inbound.channel, user_ids=[inbound.user_id],
                lock=False))
            row = rows.get(inbound.user_id)
            wanted = row is None or _may_detect(row.state)
        return self.detector.detect(inbound.text) if wanted else None

    def _remember(self, key: tuple[str, str], state: dict[str, Any]) -> None:
        self._detecting[key] = _may_detect(state)
        self._detecting.move_to_end(key)
        if len(self._detecting) > 50_000:
            self._detecting.popitem(last=False)

    # -- when the database refuses -----------------------------------------------------------

    async def _fail(self, ask: _Ask) -> TurnResult:
        """The database refused the turn: keep the message and the reason, answer honestly."""
        inbound = ask.inbound
        logger.exception("turn failed for %s/%s", inbound.channel, inbound.user_id)
        reason = "".join(traceback.format_exception_only(*sys.exc_info()[:2])).strip()[:2000]
        kept = await self._keep(Message(inbound.channel, inbound.user_id, inbound.message_id,
                                        inbound.kind, inbound.raw or inbound.text),
                                status="failed", reason=reason)
        tr = self.engine_for(None).tr
        lang = ask.language if ask.language in tr.languages else "en"
        # "Kept" only when it is: in the database, or in the spool that the next start replays.
        text = tr.t(lang, "error_internal" if kept else "error_not_saved")
        # Nothing could be written, so this reply is not in the outbox: the caller shows it.
        return TurnResult([Reply(text, "error", lang)], failed=True, kept=kept)

    async def record_unprocessed(self, *, channel: str, message_id: str, user_id: str | None,
                                 kind: str, payload: str, status: str, reason: str) -> bool:
        """Keep a message that never reaches the engine (auto-reply, bounce, group chat…).

        Returns False when that message was recorded before (a duplicate delivery). Raises
        only when neither the database nor the spool could keep it.
        """
        message = Message(channel, user_id or "", message_id, kind, payload)
        try:
            return await self.store.record_unprocessed(message, status=status, reason=reason)
        except Exception:
            if await self._spool(message, status, reason):
                return True
            raise

    async def _keep(self, message: Message, *, status: str, reason: str) -> bool:
        try:
            await self.store.record_unprocessed(message, status=status, reason=reason)
            return True
        except Exception:
            logger.exception("could not record failed inbound message %s", message.message_id)
        return await self._spool(message, status, reason)

    async def _spool(self, message: Message, status: str, reason: str) -> bool:
        if self.spool is None:
            return False
        record = {"channel": message.channel, "message_id": message.message_id,
                  "user_id": message.user_id or None, "kind": message.kind,
                  "payload": message.payload, "status": status, "reason": reason,
                  "received_at": self.clock().isoformat()}
        kept = await self.spool.append_async(record)
        if kept:
            logger.warning("%s message %s kept in the spool %s until the database takes it",
                           message.channel, message.message_id, self.spool.path)
        return kept

    async def replay_spool(self) -> int:
        """Store the messages a previous run could only keep in the spool."""
        if self.spool is None:
            return 0

        async def keep(record: dict[str, Any]) -> None:
            received = datetime.fromisoformat(record["received_at"])
            reason = (f"{record.get('reason') or ''} [the database refused it at "
                      f"{received:%Y-%m-%d %H:%M:%S} UTC; kept in the spool]").strip()
            message = Message(record["channel"], record.get("user_id") or "",
                              record["message_id"], record["kind"], record["payload"])
            await self.store.record_at(message, status=record["status"], reason=reason,
                                       received_at=received)

        return await self.spool.replay(keep)

    async def language_of(self, channel: str, address: str) -> str | None:
        """The stored conversation language of whoever has this address (None: unknown)."""
        return await self.db.transaction(functools.partial(
            repo.address_language, channel=channel, user_id=address))

    async def set_unreachable(self, channel: str, address: str, unreachable: bool) -> bool:
        """Record that an address cannot (or can again) be reached; True when it changed."""
        changed = await self.db.transaction(functools.partial(
            repo.set_unreachable, channel=channel, user_id=address, unreachable=unreachable,
            now=self.clock()))
        return bool(changed)

    # -- messages that are not replies to a turn ----------------------------------------------

    def add_outbox(self, conn: Any, items: list[dict[str, Any]],
                   now: datetime) -> list[OutboxItem]:
        """Outgoing messages inside a caller's transaction (the email notices)."""
        from storage.store import _add_outbox

        return _add_outbox(conn, items, now)

    async def send_later(self, items: list[dict[str, Any]]) -> list[OutboxItem]:
        """Commit messages to the outbox, then hand them to the channel senders."""
        created = await self.store.add_outbox(items)
        self.publish(created)
        return created

    def publish(self, created: list[OutboxItem]) -> None:
        """Hand committed outbox rows to the channel senders."""
        if created:
            for listener in self._listeners:
                listener(created)


def _conversation(state: dict[str, Any]) -> Conversation:
    return Conversation(state["questionnaire"], state["qversion"], state["ref"],
                        state["version"], state.get("lang"))


def _slot(key: str) -> tuple[str, int]:
    qid, rep = split_slot(key)
    return qid, rep or 0


def _may_detect(state: dict[str, Any]) -> bool:
    """The engine uses a detection only before the language is settled."""
    return not state.get("lang_explicit") and state.get("phase") in ("new", "language")
