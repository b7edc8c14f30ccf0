"""One person across channels: binding an address to a respondent, and the opt-out.

Functions on a sync Connection, run through `Database.transaction(fn, ...)` like
storage/repository.py: a Telegram chat opening an invitation's deep link, an e-mail address
confirmed from chat (bound and its first mail queued in the same commit), the address the
service proposes for /email, and the opt-out (respondents.opted_out_at) with its audit event.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, insert, select, update
from sqlalchemy.engine import Connection

from storage import repository as repo
from storage.models import events, invitations, respondents


@dataclass(frozen=True, slots=True)
class Invited:
    """The person an invitation was sent to."""

    invitation_id: int
    respondent_id: int
    language: str
    name: str | None
    organization: str | None
    email: str


@dataclass(frozen=True, slots=True)
class Linked:
    """What opening a deep link did: "bound" (or already was), "refused" (the invitation
    is bound to another account on that channel) or "unknown" (no such invitation)."""

    status: str
    invited: Invited | None = None


def invited(conn: Connection, invitation_id: int) -> Invited | None:
    stmt = (select(invitations.c.id, invitations.c.respondent_id, invitations.c.language,
                   invitations.c.email, respondents.c.name, respondents.c.organization)
            .select_from(invitations.join(respondents,
                                          invitations.c.respondent_id == respondents.c.id))
            .where(invitations.c.id == invitation_id))
    row = conn.execute(stmt).one_or_none()
    if row is None:
        return None
    return Invited(row.id, row.respondent_id, row.language, row.name, row.organization,
                   row.email)


def link_invitation(conn: Connection, *, invitation_id: int, channel: str, user_id: str,
                    message_id: str, now: datetime) -> Linked:
    """Bind the address to the invited respondent, unless that respondent already has
    another address on the channel: then the attempt is kept as a "link_refused" event."""
    person = invited(conn, invitation_id)
    if person is None:
        return Linked("unknown")
    rid = person.respondent_id
    other = repo.respondent_address(conn, rid, channel)
    if other is not None and other != user_id:
        conn.execute(insert(events).values(
            respondent_id=rid, submission_id=None, type="link_refused", created_at=now,
            data={"type": "link_refused", "channel": channel, "chat_id": user_id,
                  "invitation": invitation_id, "message_id": message_id}))
        return Linked("refused", person)
    if other is None:
        repo.move_address(conn, channel=channel, user_id=user_id, respondent_id=rid, now=now)
    return Linked("bound", person)


def known_email(conn: Connection, channel: str, user_id: str) -> str | None:
    """The e-mail address of the person behind an address: bound, else invited."""
    rid = repo.address_owner(conn, channel, user_id)
    if rid is None:
        return None
    bound = repo.respondent_address(conn, rid, "email")
    if bound:
        return bound
    contact = conn.execute(select(respondents.c.email).where(respondents.c.id == rid)).scalar()
    if contact:
        return contact
    stmt = (select(invitations.c.email).where(invitations.c.respondent_id == rid)
            .order_by(invitations.c.id.desc()).limit(1))
    return conn.execute(stmt).scalar()


def _claimed(conn: Connection, respondent_id: int) -> bool:
    """Whether a respondent stands for someone: a report begun, or an invitation."""
    row = conn.execute(select(respondents.c.submission_id, respondents.c.email)
                       .where(respondents.c.id == respondent_id)).one_or_none()
    if row is None:
        return False
    if row.submission_id is not None or row.email:
        return True
    found = select(invitations.c.id).where(invitations.c.respondent_id == respondent_id)
    return conn.execute(found.limit(1)).first() is not None


def bind_email(conn: Connection, *, respondent_id: int, address: str,
               items: list[dict[str, Any]], now: datetime) -> tuple[str, str | None, list[Any]]:
    """Bind an e-mail address confirmed from chat and queue `items`, in one commit.

    ("bound", None, rows); refused, with nothing queued: ("taken", None, []) when the
    address is another person's (a report begun, or an invitation), ("other", their address,
    []) when this person already has another address.
    """
    from storage.store import _add_outbox  # the store imports this module

    owner = repo.address_owner(conn, "email", address)
    if owner is not None and owner != respondent_id and _claimed(conn, owner):
        return "taken", None, []
    if owner != respondent_id:
        other = repo.respondent_address(conn, respondent_id, "email")
        if other is not None and other != address:
            return "other", other, []
        repo.move_address(conn, channel="email", user_id=address, respondent_id=respondent_id,
                          now=now)
    conn.execute(update(respondents).where(and_(respondents.c.id == respondent_id,
                                                respondents.c.email.is_(None)))
                 .values(email=address))
    return "bound", None, _add_outbox(conn, items, now)


def set_opted_out(conn: Connection, *, respondent_id: int, now: datetime,
                  opted_out: bool, event: dict[str, Any] | None = None) -> bool:
    """Opt out (or back in); True when it changed. `event` (the audit data) is written only
    on a change."""
    where = respondents.c.opted_out_at.is_(None) if opted_out \
        else respondents.c.opted_out_at.is_not(None)
    changed = conn.execute(update(respondents)
                           .where(and_(respondents.c.id == respondent_id, where))
                           .values(opted_out_at=now if opted_out else None)).rowcount
    if changed and event is not None:
        conn.execute(insert(events).values(respondent_id=respondent_id, submission_id=None,
                                           type=event["type"], data=event, created_at=now))
    return bool(changed)


def opt_out_address(conn: Connection, *, channel: str, user_id: str | None,
                    respondent_id: int | None, now: datetime, message: dict[str, Any],
                    notices: list[dict[str, Any]]) -> tuple[bool | None, list[Any]]:
    """An unsubscribe by mail: keep the message, opt its respondent out, queue the notice.

    (None, []) when the message was seen before; (False, rows) when nobody is behind it.
    """
    from storage.store import _add_outbox

    found = repo.insert_inbound(conn, channel=channel, message_id=message["message_id"],
                                user_id=user_id, kind="text", payload=message["payload"],
                                status="processed", reason="unsubscribe", now=now)
    if found is None:
        return None, []
    rid = respondent_id
    if rid is None and user_id:
        rid = repo.address_owner(conn, channel, user_id)
    if rid is None:
        return False, _add_outbox(conn, notices, now)
    set_opted_out(conn, respondent_id=rid, now=now, opted_out=True,
                  event={"type": "opted_out", "channel": channel, "by": user_id})
    for item in notices:
        item.setdefault("respondent_id", rid)
    return True, _add_outbox(conn, notices, now)


def invitation_address(conn: Connection, invitation_id: int, now: datetime
                       ) -> tuple[int, str] | None:
    """(respondent, e-mail address) of an invitation: the person's bound address, else the
    invitation's, bound now if it is free (so the store finds the person by it)."""
    person = invited(conn, invitation_id)
    if person is None:
        return None
    rid = person.respondent_id
    bound = repo.respondent_address(conn, rid, "email")
    if bound:
        return rid, bound
    if repo.address_owner(conn, "email", person.email) is None:
        repo.add_address(conn, respondent_id=rid, channel="email", user_id=person.email,
                         now=now)
    return rid, person.email


__all__ = [
    "Invited",
    "Linked",
    "bind_email",
    "invitation_address",
    "invited",
    "known_email",
    "link_invitation",
    "opt_out_address",
    "set_opted_out",
]
