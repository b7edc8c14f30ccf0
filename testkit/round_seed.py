"""A reporting round written straight into the database: invited people in every situation
(not started, in progress, submitted, opted out, undeliverable…), for reminder and stats tests
and the reminder benchmark."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import insert
from sqlalchemy.engine import Connection

from storage.db import Database
from storage.models import addresses, invitations, respondents, rounds, submissions

QUESTIONNAIRE = "cpb_cb_survey"
SEEDED_AT = datetime(2027, 9, 1, 9, 0, tzinfo=UTC)


@dataclass
class Person:
    email: str
    language: str = "en"
    country: str | None = None  # ISO alpha-3
    org_type: str | None = None
    state: dict[str, Any] = field(default_factory=dict)
    last_channel: str | None = None  # None: never answered
    telegram: str | None = None  # chat id
    telegram_unreachable: bool = False
    email_address: bool = True  # an addresses row for the email
    opted_out: bool = False
    status: str = "sent"  # the invitation's
    reminders_sent: int = 0
    last_reminder_at: datetime | None = None
    submission: str | None = None  # None (not started) | draft | submitted
    message_id: str | None = None  # the invitation's Message-ID


@dataclass
class Seeded:
    round_id: int
    respondents: dict[str, int]  # email -> respondent id
    invitations: dict[str, int]  # email -> invitation id


async def seed_round(db: Database, people: list[Person], *, deadline: date | None,
                     questionnaire: str = QUESTIONNAIRE,
                     invited_at: datetime = SEEDED_AT) -> Seeded:
    """invited_at: when the invitations went out (the first reminder waits the interval)."""
    return await db.transaction(functools.partial(_seed, people=people, deadline=deadline,
                                                  questionnaire=questionnaire,
                                                  invited_at=invited_at))


def _seed(conn: Connection, *, people: list[Person], deadline: date | None,
          questionnaire: str, invited_at: datetime) -> Seeded:
    now = SEEDED_AT
    round_id = conn.execute(insert(rounds).values(
        questionnaire_id=questionnaire, deadline=deadline, created_at=now)
        .returning(rounds.c.id)).scalar_one()
    seeded = Seeded(round_id, {}, {})
    address_rows, invitation_rows = [], []
    for i, p in enumerate(people):
        channel = p.last_channel or "email"
        user = p.telegram if channel == "telegram" and p.telegram else p.email
        rid = conn.execute(insert(respondents).values(
            channel=channel, channel_user_id=user, display_name=None, language=p.language,
            state=p.state, submission_id=None, unreachable=False, email=p.email,
            name=f"Person {i}", organization=f"Org {i}", country=p.country,
            org_type=p.org_type, last_channel=p.last_channel,
            opted_out_at=now if p.opted_out else None, created_at=now, updated_at=now)
            .returning(respondents.c.id)).scalar_one()
        seeded.respondents[p.email] = rid
        if p.email_address:
            address_rows.append({"respondent_id": rid, "channel": "email",
                                 "channel_user_id": p.email, "unreachable": False,
                                 "created_at": now})
        if p.telegram:
            address_rows.append({"respondent_id": rid, "channel": "telegram",
                                 "channel_user_id": p.telegram,
                                 "unreachable": p.telegram_unreachable, "created_at": now})
        if p.submission:
            sid = conn.execute(insert(submissions).values(
                respondent_id=rid, questionnaire_id=questionnaire, questionnaire_version="1",
                reference=p.state.get("ref") or f"CB-SEED{i:04d}", version=1,
                status=p.submission, language=p.language, channel=channel, started_at=now,
                updated_at=now, submitted_at=now if p.submission == "submitted" else None)
                .returning(submissions.c.id)).scalar_one()
            from sqlalchemy import update

            conn.execute(update(respondents).where(respondents.c.id == rid)
                         .values(submission_id=sid))
        invitation_rows.append({
            "round_id": round_id, "respondent_id": rid, "email": p.email,
            "language": p.language, "status": p.status, "outbox_id": None,
            "message_id": p.message_id, "sent_at": invited_at if p.status != "pending" else None,
            "times_sent": 0 if p.status == "pending" else 1,
            "undeliverable_at": now if p.status == "undeliverable" else None,
            "undeliverable_reason": "550 no such user" if p.status == "undeliverable" else None,
            "reminders_sent": p.reminders_sent, "last_reminder_at": p.last_reminder_at,
            "created_at": now})
    if address_rows:
        conn.execute(insert(addresses), address_rows)
    for row in invitation_rows:
        iid = conn.execute(insert(invitations).values(**row).returning(invitations.c.id)
                           ).scalar_one()
        seeded.invitations[row["email"]] = iid
    return seeded
