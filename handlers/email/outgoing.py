"""Outgoing mail: an outbox payload made into a message and sent. An engine form is rendered
(text and HTML), threaded under the mail it answers with a Message-ID fixed by that mail, and
given the report's reply token (subject tag and Reply-To plus-address)."""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import TYPE_CHECKING, Any

from bot.outbox import OutboxItem

from .form_reader import bare_subject
from .form_render import FormRenderer
from .parsing import ParsedMail, normalize_address
from .render import Doc, build_message, format_address, render_html, render_text
from .smtp import SmtpSender
from .tokens import make_token

if TYPE_CHECKING:
    from bot.engine import Engine


def _angle(message_id: str | None) -> str | None:
    return f"<{message_id.strip('<>')}>" if message_id else None


def reply_subject(theirs: str, ours: str) -> str:
    """ "Re: <their subject>", one prefix and no old [ref:…] tag; ours when theirs is empty."""
    subject = bare_subject(theirs)
    return f"Re: {subject}" if subject else ours


def thread_of(mail: ParsedMail) -> dict[str, Any]:
    """What a reply to `mail` needs to thread under it."""
    return {
        "message_id": mail.message_id,
        "subject": mail.subject,
        "references": list(mail.references[-10:]),
        "synthesized": mail.message_id_synthesized,
    }


class MailComposer:
    """Renders and sends the email channel's outbox rows."""

    def __init__(self, *, secret: bytes, email_from: str, from_name: str | None,
                 engines: dict[str, Engine], default_questionnaire: str,
                 smtp: SmtpSender) -> None:
        self.secret = secret
        self.from_address = normalize_address(email_from)
        if not self.from_address:
            raise ValueError(f"CAPBOT_EMAIL_FROM is not an address: {email_from!r}")
        local, _, self.domain = self.from_address.rpartition("@")
        self.local = local.split("+", 1)[0]
        self.from_header = format_address(from_name, self.from_address)
        self.default_questionnaire = default_questionnaire
        self.renderers = {qid: FormRenderer(engine) for qid, engine in engines.items()}
        self.smtp = smtp

    def renderer(self, state: dict[str, Any] | None) -> FormRenderer:
        return (
            self.renderers.get((state or {}).get("questionnaire"))
            or self.renderers[self.default_questionnaire]
        )

    def envelope(
        self, doc: Doc, thread: dict[str, Any], *, reply: bool, index: int
    ) -> dict[str, Any]:
        """Subject, HTML and threading headers of one mail answering `thread`."""
        subject = doc.subject
        out: dict[str, Any] = {}
        if reply:
            if doc.kind not in ("form", "verify"):  # verify: not the subject of a forgery
                subject = reply_subject(thread["subject"], doc.subject)
            if not thread["synthesized"]:
                out["in_reply_to"] = thread["message_id"]
                out["references"] = [*thread["references"], thread["message_id"]]
        out["subject"] = subject
        out["html"] = render_html(doc)
        # A Message-ID fixed by the inbound mail survives retries and restarts (receivers
        # can de-duplicate).
        digest = hashlib.sha256(f"{thread['message_id']}\0{index}".encode()).hexdigest()[:24]
        out["mid"] = f"capbot.{digest}@{self.domain}"
        return out

    def rendered(self, p: dict[str, Any]) -> dict[str, Any]:
        """An engine form reply's payload with the mail it stands for: text, HTML, headers."""
        view = p["form"]
        doc = self.renderer(view["state"]).render(view)
        return {
            **p,
            "text": render_text(doc),
            **self.envelope(
                doc, p["thread"], reply=p.get("reply", True), index=p.get("index", 0)
            ),
        }

    async def send(self, item: OutboxItem) -> None:
        p = item.payload
        if "form" in p:
            p = self.rendered(p)
        to = p.get("to") or item.address
        ref = p.get("ref")
        subject = p.get("subject") or self.default_subject(p.get("language") or "en")
        reply_to = None
        if ref:
            # Bound to the report's owner: a delegate's reply then stays a delegate's reply.
            token = make_token(self.secret, ref, item.address, int(time.time()))
            subject = f"{subject} [ref:{token}]"
            reply_to = f"{self.local}+{token}@{self.domain}"
        mid = p.get("mid") or "capbot.{}.{}@{}".format(
            item.id,
            hmac.new(self.secret, str(item.id).encode(), "sha256").hexdigest()[:12],
            self.domain,
        )
        data = build_message(
            from_addr=self.from_header,
            to=to,
            subject=subject,
            text=p.get("text", ""),
            html_body=p.get("html"),
            message_id=f"<{mid}>",
            reply_to=reply_to,
            in_reply_to=_angle(p.get("in_reply_to")),
            references=[r for r in map(_angle, p.get("references") or []) if r],
            language=p.get("language"),
        )
        await self.smtp.send(self.from_address, [to], data)

    def default_subject(self, lang: str) -> str:
        renderer = self.renderer(None)
        return renderer.tr.raw(lang, "title", renderer.qn.id)
