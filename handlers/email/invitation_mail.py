"""Invitation mails (`capbot invite`): rendered and sent at the configured email rate, with
the headers bulk mail needs; the bulk mails (invitations, reminders) are paced, replies are not.

An invitation payload (bot/invitations.py) is the questionnaire's email form under a lead;
its mail carries the invitation token in Reply-To (`bot+<token>@domain`) and in the subject
tag, a `List-Unsubscribe` mailto with subject "unsubscribe <token>",
`Auto-Submitted: auto-generated` (we write first; RFC 3834) and the Message-ID recorded on
the invitation. Sent: counted on the invitation; refused for good by the server: the
invitation is undeliverable.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from aiolimiter import AsyncLimiter

from bot.invitations import InvitationBook
from bot.outbox import OutboxItem, PermanentSendError, Sender

from .lead import with_lead
from .render import build_message, render_html, render_text

if TYPE_CHECKING:
    from .channel import EmailChannel

logger = logging.getLogger(__name__)


def is_bulk(payload: dict[str, Any]) -> bool:
    return "invitation" in payload or "reminder" in payload


def invitation_sender(
    channel: EmailChannel, send: Sender, *, rate: float, book: InvitationBook | None = None
) -> Sender:
    """`send` for the email dispatcher: invitations rendered and sent here, bulk mail held to
    `rate` messages a second (0: unpaced), everything else passed on untouched."""
    limiter = AsyncLimiter(rate, 1.0) if rate > 0 else None
    book = book or InvitationBook(channel.database)
    channel.invitations = book  # type: ignore[attr-defined]  # bounces and tests reach it

    async def sending(item: OutboxItem) -> None:
        p = item.payload
        if limiter is not None and is_bulk(p):
            await limiter.acquire()
        if "invitation" not in p:
            await send(item)
            return
        meta = p["invitation"]
        try:
            await channel.sender.send(
                channel.from_address, [item.address], render_invitation(channel, item.address, p)
            )
        except PermanentSendError as exc:
            await book.undeliverable(
                reason=f"refused when sent: {exc}", invitation_ids=[meta["id"]]
            )
            raise
        book.mark_sent(meta["id"], item.id, meta.get("queued_at") or "")

    return sending


def render_invitation(channel: EmailChannel, to: str, p: dict[str, Any]) -> bytes:
    """The whole invitation message, ready for SMTP DATA."""
    meta, view = p["invitation"], p["form"]
    renderer = (
        channel.renderers.get(view["state"].get("questionnaire"))
        or channel.renderers[channel.default_questionnaire]
    )
    doc = with_lead(renderer.render(view), p["lead"], ref_line=None)
    doc.footer = "\n".join(part for part in (doc.footer, p["lead"].get("footer")) if part)
    token = meta["token"]
    extra = [("List-Unsubscribe", f"<{meta['unsubscribe']}>")]
    return build_message(
        from_addr=channel.composer.from_header,
        to=to,
        subject=f"{doc.subject} [ref:{token}]",
        text=render_text(doc),
        html_body=render_html(doc),
        message_id=meta["message_id"],
        reply_to=f"{channel.local}+{token}@{channel.domain}",
        language=p.get("language"),
        auto_submitted="auto-generated",
        suppress="OOF, AutoReply",
        extra=extra,
    )


__all__ = ["invitation_sender", "is_bulk", "render_invitation"]
