"""Invitations of a reporting round: each contact's respondent, invitation and email, queued
in the outbox (storage/rounds.py), and what became of each (sent, refused, bounced).

The invitation mail is the questionnaire's email form under a lead in the contact's
language (greeting by name, what is asked, the deadline in that language's long date
format, both ways to answer). Its payload is built here, in the transaction that queues it;
handlers/email/invitation_mail.py renders and sends it.

How a reply finds its person (agreed with the email channel, handlers/email/channel.py
`_invitation`): the invitation token (bot/invite_tokens.py) is in the Reply-To plus-address
(`bot+<token>@domain`), in the subject tag `[ref:<token>]` and in the List-Unsubscribe
subject, so `find_invite_token` finds it in any of them; the deep link
`https://t.me/<bot>?start=<token>` carries the same token. The invited person's draft is
prepared when invited — state phase "new" in the invitation's language (explicit: the
Secretariat chose it) with a report reference, no submission row yet — so the first turn,
from either channel, starts in that language and the store creates the submission then.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import hmac
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from bot.contacts import Contact
from bot.engine import Engine
from bot.i18n import Translations, long_date
from bot.invite_tokens import make_invite_token
from bot.outbox import OutboxItem
from storage import rounds as store
from storage.db import Database

logger = logging.getLogger(__name__)

DOMAIN = "invite"
COMMIT_BATCH = 200  # invitations per transaction: one durable commit, not one per contact
Publish = Callable[[list[OutboxItem]], None]


def deep_link(bot_username: str | None, token: str) -> str | None:
    return f"https://t.me/{bot_username.lstrip('@')}?start={token}" if bot_username else None


def message_id(secret: bytes, invitation_id: int, number: int, domain: str) -> str:
    """The Message-ID of an invitation's n-th sending: fixed, so a retry after a crash
    repeats it (receivers de-duplicate) and a DSN quoting it finds the invitation."""
    tag = hmac.new(secret, f"invite:{invitation_id}:{number}".encode(),
                   hashlib.sha256).hexdigest()[:12]
    return f"<capbot.invite.{invitation_id}.{number}.{tag}@{domain}>"


def lead(tr: Translations, lang: str, *, title: str, name: str, organization: str,
         deadline: date, link: str | None) -> dict[str, Any]:
    """Subject and paragraphs above the form, and the footer, in the contact's language."""
    t = functools.partial(tr.t, lang, domain=DOMAIN)
    when = long_date(deadline, lang)
    paragraphs = [t("greeting", name=name) if name else t("greeting_anon"),
                  t("body", title=title, organization=organization or name or title,
                    deadline=when),
                  t("reply_mail")]
    if link:
        paragraphs.append(t("telegram", link=link))
    return {"subject": t("subject", title=title, deadline=when), "paragraphs": paragraphs,
            "footer": t("unsubscribe")}


@dataclass(slots=True)
class RunReport:
    round_id: int | None
    outcomes: list[store.Outcome] = field(default_factory=list)

    @property
    def counts(self) -> Counter[str]:
        return Counter(o.action for o in self.outcomes)

    @property
    def rows(self) -> list[OutboxItem]:
        return [o.row for o in self.outcomes if o.row is not None]


@dataclass(frozen=True, slots=True)
class Planned:
    contact: Contact
    action: str  # store.QUEUED | store.RESENT | store.ALREADY | store.WAITING
    times_sent: int = 0
    status: str | None = None


class Invitations:
    """One questionnaire's round: plan (dry run), queue, settle what was sent."""

    def __init__(self, db: Database, engine: Engine, translations: Translations, *,
                 secret: bytes, email_from: str, bot_username: str | None,
                 new_reference: Callable[[], str],
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.db = db
        self.engine = engine
        self.tr = translations
        self.secret = secret
        local, _, self.domain = email_from.rpartition("@")
        self.local = local.split("+", 1)[0]
        self.bot_username = bot_username
        self.new_reference = new_reference
        self.clock = clock

    @property
    def questionnaire_id(self) -> str:
        return self.engine.qn.id

    async def current_deadline(self) -> date | None:
        """The deadline of this questionnaire's latest round, if there is one."""
        return await self.db.transaction(store.latest_deadline, self.questionnaire_id)

    async def plan(self, contacts: Sequence[Contact], deadline: date, *,
                   resend: bool) -> tuple[int | None, list[Planned]]:
        """What a run would do, reading only."""
        round_id = await self.db.transaction(store.find_round, self.questionnaire_id,
                                             deadline)
        known = (await self.db.transaction(store.invited_addresses, round_id)
                 if round_id is not None else {})
        planned = []
        for c in contacts:
            row = known.get(c.email)
            if row is None:
                planned.append(Planned(c, store.QUEUED))
            elif not resend:
                planned.append(Planned(c, store.ALREADY, row["times_sent"], row["status"]))
            elif row["outbox_status"] == "pending":
                planned.append(Planned(c, store.WAITING, row["times_sent"], row["status"]))
            else:
                planned.append(Planned(c, store.RESENT, row["times_sent"], row["status"]))
        return round_id, planned

    async def queue(self, contacts: Sequence[Contact], deadline: date, *, resend: bool,
                    publish: Publish | None = None,
                    on_batch: Callable[[list[store.Outcome]], None] | None = None
                    ) -> RunReport:
        """Create the round, respondents and invitations and queue the mails, COMMIT_BATCH
        per transaction; each batch's rows go to `publish` (the senders) at once, so
        sending starts while the next batch commits."""
        await self.settle()  # what an interrupted run sent is counted first
        round_id = await self.db.transaction(functools.partial(
            store.ensure_round, questionnaire_id=self.questionnaire_id, deadline=deadline,
            now=self.clock()))
        report = RunReport(round_id)
        for start in range(0, len(contacts), COMMIT_BATCH):
            batch = [_row(c) for c in contacts[start:start + COMMIT_BATCH]]
            outcomes = await self.db.transaction(functools.partial(
                store.invite_batch, round_id=round_id, contacts=batch,
                new_state=self._new_state,
                payload=functools.partial(self._payload, deadline=deadline),
                resend=resend, now=self.clock()))
            report.outcomes += outcomes
            rows = [o.row for o in outcomes if o.row is not None]
            if rows and publish is not None:
                publish(rows)
            if on_batch is not None:
                on_batch(outcomes)
            await asyncio.sleep(0)
        return report

    async def settle(self) -> int:
        """Count as sent the invitations whose outbox rows were sent but not counted."""
        return await self.db.transaction(store.settle_from_outbox)

    def _new_state(self, contact: dict[str, Any]) -> dict[str, Any]:
        # The Secretariat chose the language (empty means English): the draft starts in it.
        return self.engine.new_state(ref=self.new_reference(), language=contact["language"],
                                     explicit=True)

    def _payload(self, invitation_id: int, contact: dict[str, Any], state: dict[str, Any],
                 number: int, deadline: date) -> tuple[dict[str, Any], str]:
        """The outbox payload of one invitation mail, and its Message-ID."""
        lang = contact["language"]
        token = make_invite_token(self.secret, invitation_id)
        link = deep_link(self.bot_username, token)
        title = str(self.tr.raw(lang, "title", self.questionnaire_id))
        view_state = {k: state.get(k) for k in ("questionnaire", "ref", "lang", "version",
                                                "phase", "answers")}
        view_state["lang"] = lang
        view_state["answers"] = view_state["answers"] or {}
        mid = message_id(self.secret, invitation_id, number, self.domain)
        payload = {
            "text": "", "kind": "question", "language": lang, "ref": state.get("ref"),
            "to": None,
            "form": {"show": "form", "state": view_state, "offer_languages": False,
                     "remaining": bool(state.get("answers"))},
            "lead": lead(self.tr, lang, title=title, name=contact.get("name") or "",
                         organization=contact.get("organization") or "", deadline=deadline,
                         link=link),
            "invitation": {"id": invitation_id, "token": token, "number": number,
                           "message_id": mid, "telegram": link,
                           "unsubscribe": f"mailto:{self.local}@{self.domain}"
                                          f"?subject=unsubscribe%20{token}"},
        }
        return payload, mid


def _row(c: Contact) -> dict[str, Any]:
    return {"email": c.email, "name": c.name, "organization": c.organization,
            "country": c.country, "language": c.language, "org_type": c.org_type}


class InvitationBook:
    """What the email sender reports about invitations: sent (counted in batches, so 5,000
    mails are not 5,000 commits), refused by the mail server, or bounced later."""

    def __init__(self, db: Database, *, clock: Callable[[], datetime] = lambda: datetime.now(UTC),
                 delay: float = 0.2) -> None:
        self.db = db
        self.clock = clock
        self.delay = delay
        self.sent = 0  # invitations sent by this process (progress)
        self._pending: list[tuple[int, int, str]] = []
        self._flusher: asyncio.Task | None = None

    def mark_sent(self, invitation_id: int, outbox_id: int, queued_at: str) -> None:
        self.sent += 1
        self._pending.append((invitation_id, outbox_id, queued_at))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_later(), name="invitations-sent")

    async def _flush_later(self) -> None:
        await asyncio.sleep(self.delay)
        await self.flush()

    async def flush(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                await self.db.transaction(functools.partial(store.record_sent, sent=batch,
                                                            now=self.clock()))
            except Exception as exc:  # the outbox row is marked sent: settle() counts it
                logger.warning("could not count %d invitations as sent yet: %s", len(batch),
                               exc)
                return

    async def close(self) -> None:
        if self._flusher is not None and not self._flusher.done():
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        await self.flush()

    async def undeliverable(self, *, reason: str, invitation_ids: Iterable[int] = (),
                            message_ids: Iterable[str] = ()) -> int | None:
        """Mark the invitation found (by id, else by the Message-ID of its mail)
        undeliverable and its address unreachable; its id, or None when none matched."""
        now = self.clock()
        ids, mids = list(invitation_ids), list(message_ids)

        def mark(conn: Any) -> int | None:
            found = next((i for i in ids if store.invitation_status(conn, i) is not None),
                         None)
            if found is None:
                found = store.invitation_by_message_id(conn, mids)
            if found is None:
                return None
            store.mark_undeliverable(conn, invitation_id=found, reason=reason, now=now)
            return found

        found = await self.db.transaction(mark)
        if found is not None:
            logger.info("invitation %s undeliverable: %s", found, reason[:200])
        return found


__all__ = ["DOMAIN", "InvitationBook", "Invitations", "Planned", "RunReport", "deep_link",
           "lead", "long_date", "message_id"]
