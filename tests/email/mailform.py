"""The email conversation without servers: the reader, the engine's form turn, the renderer."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from bot.engine import Engine, Turn
from bot.language import Detection
from bot.messages import Inbound
from handlers.email.form_reader import FormReader, ReadReply
from handlers.email.form_render import FormRenderer
from handlers.email.render import Doc

OWNER = "owner@example.org"


@dataclass(slots=True)
class MailOut:
    doc: Doc
    to: str | None = None  # None: the report's owner; else another address (a delegate)
    reply: bool = True  # answers the inbound mail (threading headers, "Re:" subject)


@dataclass(slots=True)
class MailTurn:
    turn: Turn
    mails: list[MailOut] = field(default_factory=list)


class MailForm:
    """What the email channel does with one reply, minus IMAP, storage and SMTP."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.qn, self.tr, self.layout = engine.qn, engine.tr, engine.numbering
        self.renderer = FormRenderer(engine)
        self.reader = FormReader(self.renderer)

    def read(self, text: str, subject: str = "") -> ReadReply:
        return self.reader.read(text, subject)

    def handle(self, state: dict[str, Any], text: str, now: datetime,
               detection: Detection | None = None, *, hint: str | None = None,
               subject: str = "", delegate: str | None = None,
               muted: frozenset[str] = frozenset()) -> MailTurn:
        entries, commands = self.reader.inbound_fields(text, subject)
        inbound = Inbound("email", OWNER, "m1", "form", text=text, language_hint=hint,
                          entries=entries, commands=commands, delegate=delegate, muted=muted)
        turn = self.engine.handle(state, inbound, now, detection)
        mails = []
        for reply in turn.replies:
            view = json.loads(json.dumps(reply.extra["form"]))  # as the outbox keeps it
            mails.append(MailOut(self.renderer.render(view), reply.extra["to"],
                                 reply.extra["reply"]))
        return MailTurn(turn, mails)

    def form_doc(self, state: dict[str, Any]) -> Doc:
        return self.renderer.form_doc(state)
