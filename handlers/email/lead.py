"""Form mails with a lead above the form (a reminder: "4 questions left; the deadline is …").

A reminder's payload is an engine form view (the questions still open) plus
`lead = {"subject": ..., "paragraphs": [...]}`, already in the respondent's language. This
module renders such a payload into a finished mail (text, HTML, subject, headers) before the
email channel sends it; anything else goes to the channel's sender untouched.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from bot.outbox import OutboxItem, Sender

from .render import Doc, Para, render_html, render_text

if TYPE_CHECKING:
    from .channel import EmailChannel


def with_lead(doc: Doc, lead: dict[str, Any], *, ref_line: str | None) -> Doc:
    """`doc` with the lead's subject and paragraphs first. `ref_line`: the "reference of your
    report" line to drop (a person invited but not started has no report yet)."""
    blocks = [b for b in doc.blocks if not (isinstance(b, Para) and b.text == ref_line)]
    paragraphs = [str(p) for p in lead.get("paragraphs") or () if p]
    doc.blocks = [Para(p, "strong" if i == 0 else "") for i, p in enumerate(paragraphs)]
    doc.blocks += blocks
    if lead.get("subject"):
        doc.subject = str(lead["subject"])
    return doc


def lead_sender(channel: EmailChannel, send: Sender) -> Sender:
    """`send` for the channel's dispatcher that first renders payloads carrying a lead."""

    async def sending(item: OutboxItem) -> None:
        p = item.payload
        if "lead" in p and "form" in p:
            item = replace(item, payload=render_led(channel, p))
        await send(item)

    return sending


def render_led(channel: EmailChannel, p: dict[str, Any]) -> dict[str, Any]:
    view = p["form"]
    state = view["state"]
    renderer = (
        channel.renderers.get(state.get("questionnaire"))
        or channel.renderers[channel.default_questionnaire]
    )
    headers = channel.composer.rendered(p)  # threading headers and Message-ID, as any form
    doc = renderer.render(view)
    ref_line = None if state.get("ref") else renderer.tr.t(state["lang"], "mail_ref", ref="")
    doc = with_lead(doc, p["lead"], ref_line=ref_line)
    rendered = {k: v for k, v in headers.items() if k not in ("form", "lead")}
    rendered.update(text=render_text(doc), html=render_html(doc), subject=doc.subject)
    return rendered
