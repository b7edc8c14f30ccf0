"""Bounces of invitation mails: which invitation a DSN or bounce answers, and why it failed.

A bounce is already machine mail (classify.py) and is never answered; here it is matched to
the invitation it reports on — by the invitation token (in the returned headers' Subject
tag or Reply-To plus-address, or anywhere in a plain-text bounce), else by the original
Message-ID (the DSN's text/rfc822-headers or message/rfc822 part, then its own In-Reply-To
and References) — and that invitation is marked undeliverable, its address unreachable.
A delay notice (Action: delayed) and a spam complaint (report-type=feedback-report) are not
failures and change nothing.
"""

from __future__ import annotations

import email
import email.policy
import logging
import re
from dataclasses import dataclass, field
from email.message import Message
from typing import TYPE_CHECKING

from bot.invite_tokens import find_invite_token, verify_invite_token

if TYPE_CHECKING:
    from .channel import EmailChannel

logger = logging.getLogger(__name__)

_MESSAGE_ID = re.compile(r"<[^<>\s@]+@[^<>\s]+>")
_MESSAGE_ID_LINE = re.compile(r"^\s*Message-ID:\s*(<[^<>\s]+>)", re.IGNORECASE | re.MULTILINE)
_FAILED = ("failed",)


@dataclass(slots=True)
class BounceFacts:
    """What a bounce says about the mail it returns."""

    failed: bool  # a permanent failure (not a delay, not a complaint)
    tokens: list[str] = field(default_factory=list)  # invitation tokens found, unverified
    message_ids: list[str] = field(default_factory=list)  # the original's, best first
    reason: str = ""


def bounce_facts(raw: bytes) -> BounceFacts:
    msg = email.message_from_bytes(raw, policy=email.policy.compat32)
    report = (
        str(msg.get_param("report-type", "") or "").lower()
        if msg.get_content_type() == "multipart/report"
        else ""
    )
    actions: list[str] = []
    reasons: list[str] = []
    returned: list[str] = []  # header blocks of the original mail
    texts: list[str] = []
    for part in msg.walk():
        ctype = part.get_content_type()
        if ctype == "message/delivery-status":
            for block in _status_blocks(part):
                action = (block.get("Action") or "").strip().lower()
                if action:
                    actions.append(action)
                status = (block.get("Status") or "").strip()
                diagnostic = " ".join((block.get("Diagnostic-Code") or "").split())
                recipient = (
                    (block.get("Final-Recipient") or block.get("Original-Recipient") or "")
                    .split(";")[-1]
                    .strip()
                )
                if status or diagnostic:
                    reasons.append(" ".join(x for x in (recipient, status, diagnostic) if x))
        elif ctype == "text/rfc822-headers":
            returned.append(_text(part))
        elif ctype == "message/rfc822":
            inner = part.get_payload()
            inner = inner[0] if isinstance(inner, list) and inner else inner
            if isinstance(inner, Message):
                returned.append("".join(f"{k}: {v}\n" for k, v in inner.items()))
        elif ctype.startswith("text/"):
            texts.append(_text(part))
    failed = report != "feedback-report" and (not actions or any(a in _FAILED for a in actions))
    tokens = []
    for text in (*returned, *texts):
        for line in text.splitlines():
            found = find_invite_token(line)
            if found and found not in tokens:
                tokens.append(found)
    ids: list[str] = []
    for text in (*returned, *texts):
        ids += _MESSAGE_ID_LINE.findall(text)
    for name in ("In-Reply-To", "References"):
        ids += _MESSAGE_ID.findall(str(msg.get(name) or ""))
    subject = " ".join(str(msg.get("Subject") or "").split())
    reason = "; ".join(reasons) or subject or "bounce"
    return BounceFacts(failed, tokens, list(dict.fromkeys(ids)), reason[:1000])


def _status_blocks(part: Message) -> list[Message]:
    payload = part.get_payload()
    if isinstance(payload, list):
        return [p for p in payload if isinstance(p, Message)]
    text = payload if isinstance(payload, str) else ""
    return [
        email.message_from_string(block) for block in re.split(r"\n\s*\n", text) if block.strip()
    ]


def _text(part: Message) -> str:
    data = part.get_payload(decode=True)
    if isinstance(data, bytes):
        return data.decode(part.get_content_charset() or "utf-8", "replace")
    payload = part.get_payload()
    return payload if isinstance(payload, str) else ""


async def note_bounce(channel: EmailChannel, raw: bytes) -> str:
    """Mark the invitation a bounce answers undeliverable; a note for the kept record."""
    try:
        facts = bounce_facts(raw)
    except Exception:  # a bounce we cannot read is still kept, unanswered
        logger.exception("cannot read a bounce")
        return ""
    if not facts.failed:
        return ""
    ids = [i for t in facts.tokens if (i := verify_invite_token(channel.secret, t)) is not None]
    if not ids and not facts.message_ids:
        return ""
    book = getattr(channel, "invitations", None)
    if book is None:
        from bot.invitations import InvitationBook

        book = channel.invitations = InvitationBook(channel.database)  # type: ignore[attr-defined]
    found = await book.undeliverable(
        reason=f"bounced: {facts.reason}", invitation_ids=ids, message_ids=facts.message_ids
    )
    return f"; invitation {found} undeliverable" if found is not None else ""


__all__ = ["BounceFacts", "bounce_facts", "note_bounce"]
