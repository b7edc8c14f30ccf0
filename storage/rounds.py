"""Reporting rounds in the database: the round, each contact's respondent and invitation, the
invitation's outbox row, and what became of it (sent, undeliverable).

Functions on a sync Connection, run through `Database.transaction(fn, ...)` like
storage/repository.py. An invitation row exists once per (round, address) (a unique
constraint); a batch of invitations starts by locking its round row, so two `capbot invite`
runs at the same time (or a run beside `capbot serve`) take turns per batch: the second one
reads the first one's invitations and queues nothing twice.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from sqlalchemy import and_, or_, select, update
from sqlalchemy.engine import Connection

from storage import repository as repo
from storage.models import addresses, invitations, outbox, respondents, rounds
from storage.store import OutboxRow

EMAIL = "email"
# What invite_batch did with a contact.
QUEUED, RESENT, ALREADY, WAITING = "queued", "resent", "already_invited", "waiting"

# (invitation id, contact, respondent state, number of this sending)
#   -> (outbox payload, Message-ID)
PayloadFn = Callable[[int, dict[str, Any], dict[str, Any], int], tuple[dict[str, Any], str]]


@dataclass(frozen=True, slots=True)
class Outcome:
    email: str
    action: str  # QUEUED | RESENT | ALREADY | WAITING (its earlier row is still unsent)
    invitation_id: int
    row: OutboxRow | None = None


def find_round(conn: Connection, questionnaire_id: str, deadline: date | None) -> int | None:
    stmt = select(rounds.c.id).where(and_(
        rounds.c.questionnaire_id == questionnaire_id,
        rounds.c.deadline.is_(None) if deadline is None else rounds.c.deadline == deadline))
    return conn.execute(stmt.order_by(rounds.c.id).limit(1)).scalar()


def latest_deadline(conn: Connection, questionnaire_id: str) -> date | None:
    """The deadline of the questionnaire's most recent round that has one."""
    return conn.execute(select(rounds.c.deadline).where(and_(
        rounds.c.questionnaire_id == questionnaire_id, rounds.c.deadline.is_not(None)))
        .order_by(rounds.c.id.desc()).limit(1)).scalar()


def ensure_round(conn: Connection, *, questionnaire_id: str, deadline: date | None,
                 now: datetime) -> int:
    """The round of this questionnaire and deadline, created the first time."""
    found = find_round(conn, questionnaire_id, deadline)
    if found is not None:
        return found
    stmt = repo._insert_ignore(conn, rounds, ["questionnaire_id", "deadline"]).values(
        questionnaire_id=questionnaire_id, deadline=deadline, created_at=now)
    conn.execute(stmt)
    found = find_round(conn, questionnaire_id, deadline)
    assert found is not None
    return found


def invited_addresses(conn: Connection, round_id: int) -> dict[str, dict[str, Any]]:
    """address -> {status, outbox status, times_sent} of a round's invitations (dry runs)."""
    stmt = (select(invitations.c.email, invitations.c.status, invitations.c.times_sent,
                   outbox.c.status.label("outbox_status"))
            .select_from(invitations.outerjoin(outbox, outbox.c.id == invitations.c.outbox_id))
            .where(invitations.c.round_id == round_id))
    return {row.email: dict(row._mapping) for row in conn.execute(stmt)}


def invite_batch(conn: Connection, *, round_id: int, contacts: Sequence[dict[str, Any]],
                 new_state: Callable[[dict[str, Any]], dict[str, Any]], payload: PayloadFn,
                 resend: bool, now: datetime) -> list[Outcome]:
    """Each contact's respondent (found by its address, else created with `new_state`) and
    invitation, and the invitation's outbox row unless one went out before (or, with
    `resend`, unless the earlier one is still waiting to be sent)."""
    # The round's row lock first: on SQLite this takes the write lock before anything is
    # read, on PostgreSQL it orders concurrent runs of the same round.
    conn.execute(update(rounds).where(rounds.c.id == round_id)
                 .values(created_at=rounds.c.created_at))
    return [_invite_one(conn, round_id, c, new_state, payload, resend, now) for c in contacts]


def _invite_one(conn: Connection, round_id: int, contact: dict[str, Any],
                new_state: Callable[[dict[str, Any]], dict[str, Any]], payload: PayloadFn,
                resend: bool, now: datetime) -> Outcome:
    address = contact["email"]
    rid = _respondent(conn, contact, new_state, now)
    conn.execute(repo._insert_ignore(conn, invitations, ["round_id", "email"]).values(
        round_id=round_id, respondent_id=rid, email=address, language=contact["language"],
        status="pending", times_sent=0, reminders_sent=0, created_at=now))
    inv = conn.execute(
        select(invitations.c.id, invitations.c.respondent_id, invitations.c.outbox_id,
               invitations.c.times_sent, outbox.c.status.label("outbox_status"))
        .select_from(invitations.outerjoin(outbox, outbox.c.id == invitations.c.outbox_id))
        .where(and_(invitations.c.round_id == round_id, invitations.c.email == address))
    ).one()
    if inv.outbox_id is not None:
        if not resend:
            return Outcome(address, ALREADY, inv.id)
        if inv.outbox_status == "pending":
            return Outcome(address, WAITING, inv.id)
    state = conn.execute(select(respondents.c.state)
                         .where(respondents.c.id == inv.respondent_id)).scalar() or {}
    data, message_id = payload(inv.id, contact, state, (inv.times_sent or 0) + 1)
    data = {**data, "invitation": {**data.get("invitation", {}), "queued_at": now.isoformat()}}
    (oid,) = repo.insert_outbox(conn, [{
        "channel": EMAIL, "respondent_id": inv.respondent_id, "address": address,
        "payload": data, "status": "pending", "attempts": 0, "created_at": now}])
    conn.execute(update(invitations).where(invitations.c.id == inv.id)
                 .values(outbox_id=oid, message_id=message_id, language=contact["language"]))
    row = OutboxRow(oid, EMAIL, address, data, inv.respondent_id)
    return Outcome(address, RESENT if inv.outbox_id is not None else QUEUED, inv.id, row)


def _respondent(conn: Connection, contact: dict[str, Any],
                new_state: Callable[[dict[str, Any]], dict[str, Any]], now: datetime) -> int:
    """The person behind the address (someone who wrote before keeps their draft), with the
    contact's details; a new one otherwise."""
    address = contact["email"]
    details = {k: contact.get(k) or None for k in ("name", "organization", "country",
                                                   "org_type")}
    rid = repo.address_owner(conn, EMAIL, address)
    if rid is None:
        conn.execute(repo._insert_ignore(conn, respondents, ["channel", "channel_user_id"])
                     .values(channel=EMAIL, channel_user_id=address, display_name=None,
                             language=contact["language"], state=new_state(contact),
                             submission_id=None, unreachable=False, email=address,
                             last_channel=None, created_at=now, updated_at=now, **details))
        rid = conn.execute(select(respondents.c.id).where(and_(
            respondents.c.channel == EMAIL,
            respondents.c.channel_user_id == address))).scalar_one()
        conn.execute(repo._insert_ignore(conn, addresses, ["channel", "channel_user_id"])
                     .values(respondent_id=rid, channel=EMAIL, channel_user_id=address,
                             unreachable=False, created_at=now))
        return rid
    row = conn.execute(select(respondents.c.state, respondents.c.email)
                       .where(respondents.c.id == rid)).one()
    values: dict[str, Any] = {k: v for k, v in details.items() if v}
    if not row.email:
        values["email"] = address
    if not row.state:  # known by address, never started: prepare the invitation's draft
        values.update(state=new_state(contact), language=contact["language"])
    if values:
        conn.execute(update(respondents).where(respondents.c.id == rid)
                     .values(updated_at=now, **values))
    return rid


def record_sent(conn: Connection, *, sent: Sequence[tuple[int, int, str]],
                now: datetime) -> int:
    """(invitation id, outbox id, queued_at ISO) of invitations just sent: counted once each
    (a later call for the same row changes nothing)."""
    done = 0
    for invitation_id, outbox_id, queued_at in sent:
        queued = datetime.fromisoformat(queued_at)
        done += conn.execute(
            update(invitations)
            .where(and_(invitations.c.id == invitation_id, invitations.c.outbox_id == outbox_id,
                        or_(invitations.c.sent_at.is_(None), invitations.c.sent_at < queued)))
            .values(status=_sent_status(), sent_at=now,
                    times_sent=invitations.c.times_sent + 1)).rowcount
    return done


def settle_from_outbox(conn: Connection) -> int:
    """Invitations whose outbox row was marked sent but that were not counted (a crash
    between the two marks, or a row `capbot serve` sent): counted now."""
    stmt = (select(invitations.c.id, outbox.c.id.label("oid"), outbox.c.sent_at)
            .select_from(invitations.join(outbox, outbox.c.id == invitations.c.outbox_id))
            .where(and_(outbox.c.status == "sent",
                        or_(invitations.c.sent_at.is_(None),
                            invitations.c.sent_at < outbox.c.created_at))))
    done = 0
    for row in conn.execute(stmt).all():
        done += conn.execute(
            update(invitations).where(and_(invitations.c.id == row.id,
                                           invitations.c.outbox_id == row.oid))
            .values(status=_sent_status(), sent_at=row.sent_at,
                    times_sent=invitations.c.times_sent + 1)).rowcount
    return done


def _sent_status():
    from sqlalchemy import case

    return case((invitations.c.status == "undeliverable", "undeliverable"), else_="sent")


def invitation_by_message_id(conn: Connection, message_ids: Sequence[str]) -> int | None:
    """The invitation whose Message-ID (with or without angle brackets) is one of these."""
    wanted = {m.strip().strip("<>") for m in message_ids if m and m.strip()}
    if not wanted:
        return None
    variants = [*wanted, *(f"<{m}>" for m in wanted)]
    return conn.execute(select(invitations.c.id).where(invitations.c.message_id.in_(variants))
                        .order_by(invitations.c.id.desc()).limit(1)).scalar()


def mark_undeliverable(conn: Connection, *, invitation_id: int, reason: str,
                       now: datetime) -> str | None:
    """Mark an invitation undeliverable and its address unreachable; the address, or None
    when there is no such invitation. Marked once: a second bounce keeps the first reason."""
    address = conn.execute(select(invitations.c.email)
                           .where(invitations.c.id == invitation_id)).scalar()
    if address is None:
        return None
    conn.execute(update(invitations)
                 .where(and_(invitations.c.id == invitation_id,
                             invitations.c.status != "undeliverable"))
                 .values(status="undeliverable", undeliverable_at=now,
                         undeliverable_reason=reason[:2000]))
    repo.set_unreachable(conn, channel=EMAIL, user_id=address, unreachable=True, now=now)
    return address


def outbox_states(conn: Connection, ids: Sequence[int]) -> dict[str, int]:
    """status -> how many of these outbox rows (what became of a run's mails)."""
    from sqlalchemy import func

    found: dict[str, int] = {}
    for start in range(0, len(ids), 500):
        chunk = list(ids[start:start + 500])
        for status, n in conn.execute(select(outbox.c.status, func.count())
                                      .where(outbox.c.id.in_(chunk))
                                      .group_by(outbox.c.status)):
            found[status] = found.get(status, 0) + n
    return found


def invitation_status(conn: Connection, invitation_id: int) -> dict[str, Any] | None:
    row = conn.execute(select(invitations).where(invitations.c.id == invitation_id)).first()
    return dict(row._mapping) if row is not None else None


__all__ = ["ALREADY", "QUEUED", "RESENT", "WAITING", "Outcome", "ensure_round", "find_round",
           "invitation_by_message_id", "invitation_status", "invite_batch",
           "invited_addresses", "latest_deadline", "mark_undeliverable", "outbox_states",
           "record_sent", "settle_from_outbox"]
