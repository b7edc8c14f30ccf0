"""One person across channels: the invitation deep link, /email, and the opt-out by mail.

The service's part of the reporting round's cross-channel journeys; adapters call it and
never touch storage (storage/links.py holds the SQL).

- `/start <token>` (Telegram): a genuine invitation token binds the chat to the invited
  respondent, whose draft then goes on in the invitation's language with a welcome by name;
  a token already bound to another account is refused politely and kept as a `link_refused`
  event (`capbot stats` lists them); a forged one gets "this link is not valid" and the chat
  goes on as a respondent of its own, as without a token.
- `/email` (the engine's dialog, bot/aside_turn.py): the address is bound to the respondent
  and the remaining questions go out as the email form with the report's reply token, so the
  reply continues the same draft; an address that is someone else's is refused.
- An unsubscribe by mail sets the opt-out (the engine's /stop does it in its own turn).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from typing import TYPE_CHECKING, Any

from bot.invite_tokens import verify_invite_token
from bot.language import normalize_language_tag
from bot.messages import Inbound
from bot.outbox import OutboxItem
from storage import links as store_links

if TYPE_CHECKING:
    from bot.service import ConversationService, TurnResult

logger = logging.getLogger(__name__)
EMAIL = "email"


def is_email_command(inbound: Inbound) -> bool:
    text = inbound.text.strip().lower() if inbound.kind == "text" else ""
    return text == "/email" or text.startswith(("/email ", "/email@"))


class CrossChannel:
    """Deep links, /email, opt-out; built by the service (`service.links`)."""

    def __init__(self, service: ConversationService) -> None:
        self.service = service

    @property
    def db(self) -> Any:
        return self.service.db

    # -- /start <token> ----------------------------------------------------------------------

    async def start_with_token(self, inbound: Inbound, secret: bytes | None) -> TurnResult:
        """A deep link's /start: bind and continue the invited draft, or say why not."""
        token = (inbound.payload or "").strip()
        invitation = verify_invite_token(secret, token) if secret and token else None
        if invitation is None:
            logger.info("%s %s: invitation link not valid", inbound.channel, inbound.user_id)
            return await self.service.handle(inbound, preface=[("link_invalid", {})])
        linked = await self.db.transaction(functools.partial(
            store_links.link_invitation, invitation_id=invitation, channel=inbound.channel,
            user_id=inbound.user_id, message_id=inbound.message_id, now=self.service.clock()))
        if linked.status == "unknown":
            return await self.service.handle(inbound, preface=[("link_invalid", {})])
        if linked.status == "refused":
            logger.warning("%s %s: invitation %s is bound to another account; refused",
                           inbound.channel, inbound.user_id, invitation)
            return await self.service.handle(inbound, preface=[("link_refused", {})])
        person = linked.invited
        assert person is not None
        if person.name and person.organization:
            greeting = ("link_welcome", {"name": person.name,
                                         "organization": person.organization})
        elif person.name:
            greeting = ("link_welcome_name", {"name": person.name})
        else:
            greeting = ("link_welcome_anonymous", {})
        lang = normalize_language_tag(person.language) or "en"
        return await self.service.handle(inbound, language=lang, explicit_language=True,
                                         preface=[greeting])

    # -- /email ------------------------------------------------------------------------------

    async def with_known_email(self, inbound: Inbound) -> Inbound:
        """For /email: the address to propose (bound, else invited); other inbounds as are."""
        if not is_email_command(inbound):
            return inbound
        found = await self.db.transaction(store_links.known_email, inbound.channel,
                                          inbound.user_id)
        return dataclasses.replace(inbound, known_email=found) if found else inbound

    async def send_form_by_email(self, inbound: Inbound, result: TurnResult,
                                 address: str) -> list[OutboxItem]:
        """Bind `address` and queue the remaining questions to it, with the chat's notice,
        in one commit; or only the notice saying why not. Then hand them to the senders."""
        state = result.state
        if state is None or result.respondent_id is None:
            return []
        engine = self.service.engine_for(state)
        thread = {"message_id": f"{inbound.channel}:{inbound.message_id}:email",
                  "subject": "", "references": [], "synthesized": True}
        form = engine.email_form_reply(state, thread)
        rid = result.respondent_id

        def chat(outcome: str, **values: Any) -> list[dict[str, Any]]:
            return [{"channel": inbound.channel, "respondent_id": rid,
                     "address": inbound.user_id, "payload": _payload(reply)}
                    for reply in engine.after_email(state, outcome, **values)]

        mail = {"channel": EMAIL, "respondent_id": rid, "address": address,
                "payload": _payload(form)}
        status, other = "bound", None

        def bind(conn: Any) -> list[Any]:
            nonlocal status, other
            now = self.service.clock()
            status, other, rows = store_links.bind_email(
                conn, respondent_id=rid, address=address,
                items=[mail, *chat("email_sent", address=address)], now=now)
            if status == "bound":
                return rows
            key = "email_taken" if status == "taken" else "email_other_bound"
            return self.service.add_outbox(conn, chat(key, address=other or address), now)

        created = await self.db.transaction(bind)
        logger.info("%s %s: /email to %s: %s", inbound.channel, inbound.user_id, address,
                    status)
        self.service.publish(created)
        return created

    # -- opt-out by mail ---------------------------------------------------------------------

    async def opt_out(self, *, channel: str, user_id: str | None, respondent_id: int | None,
                      message_id: str, payload: str,
                      notices: list[dict[str, Any]]) -> bool | None:
        """Keep an unsubscribe message and opt its respondent out, with the notices, in one
        commit. True: opted out (or already was); False: nobody behind it; None: seen before."""
        done, created = await self.db.transaction(functools.partial(
            store_links.opt_out_address, channel=channel, user_id=user_id,
            respondent_id=respondent_id, now=self.service.clock(),
            message={"message_id": message_id, "payload": payload}, notices=notices))
        self.service.publish(created)
        return done

    async def respondent_of_invitation(self, invitation_id: int) -> tuple[int, str] | None:
        """(respondent id, their e-mail address) of an invitation, if it exists."""
        return await self.db.transaction(store_links.invitation_address, invitation_id,
                                         self.service.clock())


def _payload(reply: Any) -> dict[str, Any]:
    from bot.service import reply_to_payload

    return reply_to_payload(reply)


__all__ = ["CrossChannel", "is_email_command"]
