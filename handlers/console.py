"""Console channel: one line of standard input is one message; replies as text or JSON Lines."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import uuid
from typing import Any, TextIO

from bot.messages import Inbound, Reply
from bot.service import ConversationService, TurnResult

logger = logging.getLogger(__name__)
CHANNEL = "console"
_SPECIAL = frozenset({"DONE", "SUBMIT", "AMEND"})


def render_text(reply: Reply) -> str:
    """Numbered options, as in email: answering with the number, code or label all work."""
    lines = [reply.text]
    number = 0
    for choice in reply.choices:
        mark = "[x] " if reply.multi and choice.selected else ("[ ] " if reply.multi else "")
        if choice.code in _SPECIAL:
            lines.append(f"  {choice.code} – {choice.label}")
        elif reply.kind == "language_menu":
            number += 1
            lines.append(f"  {number}. {choice.label} ({choice.code})")
        else:
            number += 1
            lines.append(f"  {number}. {mark}{choice.label}")
    return "\n".join(lines)


def render_json(reply: Reply) -> dict[str, Any]:
    return {"text": reply.text, "question": reply.question,
            "choices": [{"code": c.code, "label": c.label, "selected": c.selected}
                        for c in reply.choices],
            "multi": reply.multi, "kind": reply.kind, "language": reply.language,
            "progress": reply.progress}


def parse_line(line: str, json_mode: bool) -> tuple[str, str]:
    """('text', text) or ('choice', code); in JSON mode a non-object line is plain text."""
    line = line.rstrip("\r\n")
    if json_mode and line.lstrip().startswith("{"):
        try:
            data = json.loads(line)
        except ValueError:
            return "text", line
        if isinstance(data, dict):
            if isinstance(data.get("choice"), str):
                return "choice", data["choice"]
            if isinstance(data.get("text"), str):
                return "text", data["text"]
    return "text", line


def _read_line(lines: TextIO) -> str:
    """One line; bytes that are not UTF-8 become U+FFFD instead of ending the session."""
    buffer = getattr(lines, "buffer", None)
    if buffer is not None:
        return buffer.readline().decode("utf-8", "replace")
    return lines.readline()


class ConsoleChannel:
    def __init__(self, service: ConversationService, user: str, *, language: str | None,
                 json_mode: bool, out: TextIO = sys.stdout) -> None:
        self.service = service
        self.user = user
        self.language = language
        self.json_mode = json_mode
        self.out = out

    async def send(self, kind: str, text: str = "", choice: str | None = None) -> TurnResult:
        inbound = Inbound(CHANNEL, self.user, f"console:{uuid.uuid4().hex}", kind=kind,  # type: ignore[arg-type]
                          text=text, choice=choice,
                          raw=json.dumps({"text": text, "choice": choice}, ensure_ascii=False))
        result = await self.service.handle(inbound, language=self.language,
                                           explicit_language=self.language is not None,
                                           delivered=True)  # printed right below
        self.emit(result)
        return result

    def emit(self, result: TurnResult) -> None:
        if self.json_mode:
            for reply in result.replies:
                self.out.write(json.dumps(render_json(reply), ensure_ascii=False) + "\n")
            self.out.write(json.dumps({"awaiting": result.awaiting}) + "\n")
        else:
            for reply in result.replies:
                self.out.write(render_text(reply) + "\n\n")
        self.out.flush()

    async def run(self, lines: TextIO) -> int:
        await self.send("start", "/start")
        interactive = lines.isatty() and not self.json_mode
        while True:
            if interactive:
                self.out.write("> ")
                self.out.flush()
            line = await asyncio.to_thread(_read_line, lines)  # keep the loop free
            if not line:
                return 0
            kind, value = parse_line(line, self.json_mode)
            if kind == "choice":
                await self.send("choice", choice=value)
            else:
                await self.send("text", value)
