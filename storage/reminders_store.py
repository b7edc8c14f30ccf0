"""Reminders of a reporting round in the database: who could be reminded, and one reminder
committed together with its outbox row, its count on the invitation and its audit event.

Functions on a sync Connection, run through `Database.transaction(fn, ...)` like
storage/repository.py. A reminder is counted in the same commit as the message it queues,
and only if the invitation's count is still the one the run read: a crash, a second run
or a second replica never reminds twice.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from typing import Any

from sqlalchemy import and_, insert, select, update
from sqlalchemy.engine import Connection

from storage import repository as repo
from storage.models import addresses, events, invitations, outbox, respondents, rounds, submissions
from storage.store import OutboxRow

REMINDER, FALLBACK = "reminder", "reminder_fallback"


def candidates(conn: Connection, *, round_id: int | None = None) -> list[dict[str, Any]]:
    """Every invitation of a round with a deadline, with what the rules need of its person:
    contact, state, opt-out, last channel, addresses (channel -> (address, unreachable)) and
    whether a version of the report was submitted."""
    where = [rounds.c.deadline.is_not(None)]
    if round_id is not None:
        where.append(rounds.c.id == round_id)
    stmt = (select(invitations.c.id.label("invitation_id"), invitations.c.respondent_id,
                   invitations.c.round_id, rounds.c.deadline, rounds.c.questionnaire_id,
                   invitations.c.status.label("invitation_status"), invitations.c.language,
                   invitations.c.email, invitations.c.reminders_sent,
                   invitations.c.last_reminder_at, invitations.c.message_id,
                   invitations.c.sent_at.label("invited_at"),
                   respondents.c.opted_out_at, respondents.c.state, respondents.c.country,
                   respondents.c.last_channel)
            .select_from(invitations.join(rounds, invitations.c.round_id == rounds.c.id)
                         .join(respondents, invitations.c.respondent_id == respondents.c.id))
            .where(and_(*where)).order_by(invitations.c.id))
    rows = [dict(row) for row in conn.execute(stmt).mappings()]
    if not rows:
        return []
    invited = select(invitations.c.respondent_id)
    found: dict[int, dict[str, tuple[str, bool]]] = defaultdict(dict)
    for rid, channel, user_id, unreachable in conn.execute(
            select(addresses.c.respondent_id, addresses.c.channel, addresses.c.channel_user_id,
                   addresses.c.unreachable)
            .where(addresses.c.respondent_id.in_(invited)).order_by(addresses.c.id)):
        found[rid].setdefault(channel, (user_id, bool(unreachable)))
    submitted = {(rid, qid) for rid, qid in conn.execute(
        select(submissions.c.respondent_id, submissions.c.questionnaire_id)
        .where(and_(submissions.c.status == "submitted",
                    submissions.c.respondent_id.in_(invited))).distinct())}
    for row in rows:
        row["addresses"] = found.get(row["respondent_id"], {})
        row["submitted"] = (row["respondent_id"], row["questionnaire_id"]) in submitted
    return rows


def record_reminder(conn: Connection, *, invitation_id: int, seen_count: int, channel: str,
                    address: str, payload: dict[str, Any], respondent_id: int,
                    now: datetime) -> OutboxRow | None:
    """Count the reminder and queue its message in one commit; None when the invitation's
    count moved since it was read (another run reminded first)."""
    counted = conn.execute(
        update(invitations)
        .where(and_(invitations.c.id == invitation_id,
                    invitations.c.reminders_sent == seen_count))
        .values(reminders_sent=seen_count + 1, last_reminder_at=now)).rowcount
    if not counted:
        return None
    row = _queue(conn, channel, address, payload, respondent_id, now)
    _event(conn, respondent_id, REMINDER, now, invitation=invitation_id, number=seen_count + 1,
           channel=channel, outbox=row.id)
    return row


def record_reminders(conn: Connection, *, items: list[dict[str, Any]],
                     now: datetime) -> list[OutboxRow | None]:
    """record_reminder for several invitations in one transaction."""
    return [record_reminder(conn, now=now, **item) for item in items]


def undelivered_reminders(conn: Connection, *, channel: str) -> list[dict[str, Any]]:
    """Reminders given up on `channel` because the address became unreachable (a blocked
    bot), and not yet sent another way: what to send again by email."""
    stmt = (select(events.c.id, events.c.respondent_id, events.c.data)
            .select_from(events.join(outbox, outbox.c.id == _outbox_of(events.c.data)))
            .where(and_(events.c.type == REMINDER, outbox.c.channel == channel,
                        outbox.c.status == "failed")))
    rows = [{"event_id": r.id, "respondent_id": r.respondent_id, **(r.data or {})}
            for r in conn.execute(stmt)]
    if not rows:
        return []
    done = {(e or {}).get("of") for e in conn.execute(
        select(events.c.data).where(events.c.type == FALLBACK)).scalars()}
    unreachable = set(conn.execute(
        select(addresses.c.respondent_id).where(and_(addresses.c.channel == channel,
                                                     addresses.c.unreachable.is_(True)))
    ).scalars())
    return [r for r in rows if r["event_id"] not in done and r["respondent_id"] in unreachable]


def record_fallback(conn: Connection, *, event_id: int, invitation_id: int, channel: str,
                    address: str, payload: dict[str, Any], respondent_id: int,
                    now: datetime) -> OutboxRow | None:
    """Queue the same reminder on another channel (not counted again); None if done before."""
    # The invitation's row lock (PostgreSQL) orders two runs falling back at the same time.
    lock = select(invitations.c.id).where(invitations.c.id == invitation_id)
    if conn.dialect.name == "postgresql":
        lock = lock.with_for_update()
    conn.execute(lock)
    for data in conn.execute(select(events.c.data).where(and_(
            events.c.type == FALLBACK, events.c.respondent_id == respondent_id))).scalars():
        if (data or {}).get("of") == event_id:
            return None
    row = _queue(conn, channel, address, payload, respondent_id, now)
    _event(conn, respondent_id, FALLBACK, now, of=event_id, invitation=invitation_id,
           channel=channel, outbox=row.id)
    return row


def _outbox_of(data_column):
    """The outbox id a reminder event names, as an integer both databases compare."""
    from sqlalchemy import BigInteger, cast

    return cast(data_column["outbox"].as_string(), BigInteger)


def _queue(conn: Connection, channel: str, address: str, payload: dict[str, Any],
           respondent_id: int, now: datetime) -> OutboxRow:
    (oid,) = repo.insert_outbox(conn, [{
        "channel": channel, "respondent_id": respondent_id, "address": address,
        "payload": payload, "status": "pending", "attempts": 0, "created_at": now}])
    return OutboxRow(oid, channel, address, payload, respondent_id)


def _event(conn: Connection, respondent_id: int, kind: str, now: datetime,
           **data: Any) -> None:
    conn.execute(insert(events).values(respondent_id=respondent_id, submission_id=None,
                                       type=kind, data={"type": kind, **data},
                                       created_at=now))
