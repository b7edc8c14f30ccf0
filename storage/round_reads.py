"""The read side of reporting rounds for `capbot stats`: one row per invitation with what
its person did (opened, submitted, opted out, bounced, reminders). Imports nothing from bot,
handlers or reports; the counting and the labels are reports/round_stats.py's."""

from __future__ import annotations

from typing import Any

from sqlalchemy import and_, exists, select
from sqlalchemy.ext.asyncio import AsyncConnection

from storage.models import invitations, respondents, rounds, submissions


async def invitation_progress(conn: AsyncConnection, questionnaire_id: str) -> list[Any]:
    """(round, deadline, country, org_type, status, opened, submitted, opted_out,
    reminders_sent) per invitation of the questionnaire's rounds."""
    submitted = exists().where(and_(submissions.c.respondent_id == respondents.c.id,
                                    submissions.c.questionnaire_id == questionnaire_id,
                                    submissions.c.status == "submitted"))
    opened = exists().where(and_(submissions.c.respondent_id == respondents.c.id,
                                 submissions.c.questionnaire_id == questionnaire_id))
    stmt = (select(rounds.c.id.label("round"), rounds.c.deadline, respondents.c.country,
                   respondents.c.org_type, invitations.c.status,
                   opened.label("opened"), submitted.label("submitted"),
                   respondents.c.opted_out_at.is_not(None).label("opted_out"),
                   invitations.c.reminders_sent)
            .select_from(invitations.join(rounds, invitations.c.round_id == rounds.c.id)
                         .join(respondents, invitations.c.respondent_id == respondents.c.id))
            .where(rounds.c.questionnaire_id == questionnaire_id)
            .order_by(rounds.c.id, invitations.c.id))
    return list(await conn.execute(stmt))
