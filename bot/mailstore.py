"""The email channel's own storage needs, behind the core: one transaction per call.

A stand-in for the email part of the store port (storage/mail_store.py holds the SQL): the
adapter asks for today's reply counts, an address's report state and a report's owner, and
keeps unprocessed mail with its notices, without opening transactions or naming tables.
"""

from __future__ import annotations

from datetime import datetime
from functools import partial
from typing import Any

from bot.outbox import OutboxItem
from storage import mail_store
from storage.db import Database


class MailStore:
    def __init__(self, database: Database, channel: str = "email") -> None:
        self.database = database
        self.channel = channel

    async def reply_counts_since(self, since: datetime) -> list[tuple[str, str | None, int]]:
        return await self.database.transaction(mail_store.reply_counts_since, self.channel, since)

    async def reply_counts_for(
        self, addresses: list[str], since: datetime
    ) -> list[tuple[str, str | None, int]]:
        return await self.database.transaction(
            mail_store.reply_counts_for, self.channel, addresses, since
        )

    async def report_state(self, user_id: str) -> dict[str, Any] | None:
        return await self.database.transaction(mail_store.report_state, self.channel, user_id)

    async def senders_today(
        self, addresses: list[str], since: datetime
    ) -> tuple[dict[str, dict[str, Any] | None], list[tuple[str, str | None, int]]]:
        """report_state and reply_counts_for of a batch's senders, in one transaction."""
        return await self.database.transaction(
            mail_store.senders_today, self.channel, addresses, since
        )

    async def owner_of(self, reference: str) -> str | None:
        return await self.database.transaction(mail_store.owner_of, self.channel, reference)

    async def record_with_notices(
        self,
        *,
        message_id: str,
        user_id: str | None,
        payload: str,
        status: str,
        reason: str,
        notices: list[tuple[str, dict[str, Any]]],
        now: datetime,
    ) -> list[OutboxItem] | None:
        """Keep a message that does not reach the engine, with its notices in the same
        commit; the notices' outbox items, or None when the message was seen before."""
        ids = await self.database.transaction(
            partial(
                mail_store.record_with_notices,
                channel=self.channel,
                message_id=message_id,
                user_id=user_id,
                payload=payload,
                status=status,
                reason=reason,
                notices=notices,
                now=now,
            )
        )
        if ids is None:
            return None
        return [
            OutboxItem(oid, self.channel, address, body)
            for oid, (address, body) in zip(ids, notices, strict=True)
        ]


__all__ = ["MailStore"]
