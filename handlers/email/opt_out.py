"""Mail that opts out, and mail that answers an invitation: whose it is (the invitation token
in the plus-address, the subject tag or a given token) and the opt-out with its one notice."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from bot.invite_tokens import find_invite_token, verify_invite_token
from bot.replycap import UNVERIFIED

from .outgoing import thread_of
from .parsing import ParsedMail
from .rawmail import encode_raw
from .render import render_text
from .tokens import verify_token

if TYPE_CHECKING:
    from .channel import EmailChannel
    from .imap import Fetched

logger = logging.getLogger(__name__)
CHANNEL = "email"


async def invited_by(
    channel: EmailChannel, mail: ParsedMail, token: str | None = None
) -> tuple[int, str] | None:
    """(respondent, their address) of the invitation whose token this mail carries
    (plus-address, subject tag, or `token`), when genuine."""
    candidates = (
        [token]
        if token
        else [
            found
            for text in (
                *mail.delivered_to,
                *mail.to_addresses,
                *mail.cc_addresses,
                mail.subject,
            )
            if (found := find_invite_token(text))
        ]
    )
    for candidate in candidates:
        invitation = verify_invite_token(channel.secret, candidate)
        if invitation is not None:
            return await channel.service.links.respondent_of_invitation(invitation)
    return None


async def opt_out_by_mail(
    channel: EmailChannel, fetched: Fetched, mail: ParsedMail, lang: str, token: str | None
) -> None:
    """Opt the person out (the invitation's, by its token; else the sender's address),
    keep the mail, confirm once (on the unverified budget: From may be forged, and
    the confirmation tells the real owner)."""
    sender = mail.from_address
    invited = await invited_by(channel, mail, token)
    if invited is None and mail.token:
        claims = verify_token(channel.secret, mail.token, int(time.time()))
        owner = await channel.store.owner_of(claims.ref) if claims is not None else None
        invited = (0, owner) if owner else None
    notices: list[dict[str, Any]] = []
    await channel._count_replies(sender)
    if mail.can_reply and sender and channel.unverified_budget.allows(sender):
        doc = channel.composer.renderer(None).notice_doc(lang, "mail_unsubscribed")
        thread = thread_of(mail)
        notices.append(
            {
                "channel": CHANNEL,
                "address": sender,
                "payload": {
                    "text": render_text(doc),
                    "kind": "info",
                    "language": lang,
                    "ref": None,
                    "to": None,
                    **channel.composer.envelope(doc, thread, reply=True, index=0),
                    "cap": UNVERIFIED,
                },
            }
        )
    rid = invited[0] if invited and invited[0] else None
    user = invited[1] if invited else sender
    done = await channel.service.links.opt_out(
        channel=CHANNEL,
        user_id=user or None,
        respondent_id=rid,
        message_id=mail.message_id,
        payload=encode_raw(fetched.raw),
        notices=notices,
    )
    logger.info(
        "email %s from %s: unsubscribe (%s)",
        mail.message_id,
        sender,
        {True: "opted out", False: "nobody behind it", None: "seen before"}[done],
    )
    if done is not None:
        channel.unverified_budget.spend(item["address"] for item in notices)
