"""The queries the email channel needs besides the service's turn (functions on a sync Connection).

Run through `Database.transaction(fn, ...)`, like storage/repository.py; they are the email
part of the store port: today's reply counts per address, the state of an address's report,
a report's owner, and an unprocessed message kept together with its notices.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.engine import Connection

from storage import repository as repo
from storage.models import addresses, outbox, respondents, submissions


def reply_counts_since(
    conn: Connection, channel: str, since: datetime
) -> list[tuple[str, str | None, int]]:
    """(address, payload["cap"], rows) of the channel's outbox rows created since `since`."""
    cap = outbox.c.payload["cap"].as_string()
    stmt = (
        select(outbox.c.address, cap, func.count())
        .where(outbox.c.channel == channel, outbox.c.created_at >= since)
        .group_by(outbox.c.address, cap)
    )
    return [(address, kind, count) for address, kind, count in conn.execute(stmt)]


def reply_counts_for(
    conn: Connection, channel: str, addresses_: list[str], since: datetime
) -> list[tuple[str, str | None, int]]:
    """Like reply_counts_since, for a few addresses: what every process sent them today."""
    cap = outbox.c.payload["cap"].as_string()
    stmt = (
        select(outbox.c.address, cap, func.count())
        .where(
            outbox.c.channel == channel,
            outbox.c.address.in_(addresses_),
            outbox.c.created_at >= since,
        )
        .group_by(outbox.c.address, cap)
    )
    return [(address, kind, count) for address, kind, count in conn.execute(stmt)]


def report_state(conn: Connection, channel: str, user_id: str) -> dict[str, Any] | None:
    """The conversation state of the report of the person behind that address (whichever
    channel they started on), or None when there is none."""
    stmt = (
        select(respondents.c.state)
        .select_from(addresses.join(respondents, addresses.c.respondent_id == respondents.c.id))
        .where(addresses.c.channel == channel, addresses.c.channel_user_id == user_id)
        .limit(1)
    )
    return conn.execute(stmt).scalar()


def senders_today(
    conn: Connection, channel: str, user_ids: list[str], since: datetime
) -> tuple[dict[str, dict[str, Any] | None], list[tuple[str, str | None, int]]]:
    """report_state and reply_counts_for of several addresses in one transaction: the state
    of each one's report (None when there is none), and today's reply counts."""
    stmt = (
        select(addresses.c.channel_user_id, respondents.c.state)
        .select_from(addresses.join(respondents, addresses.c.respondent_id == respondents.c.id))
        .where(addresses.c.channel == channel, addresses.c.channel_user_id.in_(user_ids))
    )
    states: dict[str, dict[str, Any] | None] = dict.fromkeys(user_ids)
    for user_id, state in conn.execute(stmt):  # an address is unique per channel
        states[user_id] = state
    return states, reply_counts_for(conn, channel, user_ids, since)


def owner_of(conn: Connection, channel: str, reference: str) -> str | None:
    """The person's address on the channel whose report has that reference number."""
    stmt = (
        select(addresses.c.channel_user_id)
        .select_from(
            submissions.join(addresses, submissions.c.respondent_id == addresses.c.respondent_id)
        )
        .where(submissions.c.reference == reference, addresses.c.channel == channel)
        .order_by(addresses.c.id)
        .limit(1)
    )
    return conn.execute(stmt).scalar()


def record_with_notices(
    conn: Connection,
    *,
    channel: str,
    message_id: str,
    user_id: str | None,
    payload: str,
    status: str,
    reason: str,
    notices: list[tuple[str, dict[str, Any]]],
    now: datetime,
) -> list[int] | None:
    """Keep a message that does not reach the engine, and queue its notices (address,
    payload) in the same commit; their outbox ids, or None when the message was seen before."""
    found = repo.insert_inbound(
        conn,
        channel=channel,
        message_id=message_id,
        user_id=user_id,
        kind="text",
        payload=payload,
        status=status,
        reason=reason,
        now=now,
    )
    if found is None:
        return None
    if not notices:
        return []
    return repo.insert_outbox(
        conn,
        [
            {
                "channel": channel,
                "respondent_id": None,
                "address": address,
                "payload": body,
                "status": "pending",
                "attempts": 0,
                "created_at": now,
            }
            for address, body in notices
        ],
    )


__all__ = [
    "owner_of",
    "record_with_notices",
    "reply_counts_for",
    "reply_counts_since",
    "report_state",
    "senders_today",
]
