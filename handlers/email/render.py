"""Outgoing mail: a form document as plain text and HTML, and the MIME message with its headers.

The plain text is the form respondents answer; the HTML alternative shows the same blocks
with the same numbers (written out, never list auto-numbering, so what is seen is what is
typed). Every message carries Auto-Submitted: auto-replied and X-Capbot: 1 (loop safety).
"""

from __future__ import annotations

import base64
import email.utils
import functools
import hashlib
import html
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from email.policy import SMTP

from bot.i18n import RTL_LANGUAGES

logger = logging.getLogger(__name__)

# -- the document model (built by form_render.py) --------------------------------------


@dataclass(frozen=True, slots=True)
class Para:
    text: str
    style: str = ""  # "" | "note" (smaller) | "strong" (stands out)


@dataclass(frozen=True, slots=True)
class Heading:
    text: str
    level: int = 2  # 1 title, 2 section, 3 activity block


@dataclass(frozen=True, slots=True)
class Field:
    """One question of the form, ready to print."""

    label: str  # "8" or "2.8"
    prompt: str
    mark: str  # "*" (required), a localized "(optional)", or ""
    notes: tuple[str, ...]  # condition, hint, format, limits
    options: tuple[tuple[str, str], ...] = ()  # (number, label)
    current: str | None = None  # "Current answer: …"


@dataclass(frozen=True, slots=True)
class Entry:
    """One line of a digest: a recorded answer, or one that was not accepted and why."""

    label: str
    prompt: str
    value: str
    note: str = ""


@dataclass(frozen=True, slots=True)
class Example:
    lines: tuple[str, ...]  # typed the way the respondent should type them


Block = Para | Heading | Field | Entry | Example


@dataclass(slots=True)
class Doc:
    """One outgoing mail, channel-neutral: render.py makes text and HTML of it."""

    kind: str  # form | digest | review | receipt | notice | verify
    language: str
    subject: str
    blocks: list[Block] = field(default_factory=list)
    footer: str = ""



OWN_MARKER = "X-Capbot"
_INDENT = "   "
_RULE = {1: "=", 2: "-"}


def render_text(doc: Doc) -> str:
    """The plain-text body: blank lines between blocks, options as "(1) label" lines."""
    out: list[str] = []
    for block in doc.blocks:
        if isinstance(block, Heading):
            if block.level <= 2:
                out.append(f"{block.text}\n{_RULE[block.level] * min(60, _width(block.text))}")
            else:
                out.append(f"[ {block.text} ]")
        elif isinstance(block, Para):
            out.append(block.text)
        elif isinstance(block, Field):
            out.append(_field_text(block))
        elif isinstance(block, Entry):
            out.append(_entry_text(block))
        elif isinstance(block, Example):
            out.append("\n".join(_INDENT + line for line in block.lines))
    if doc.footer:
        out.append(f"-- \n{doc.footer}")
    return "\n\n".join(out) + "\n"


def _width(text: str) -> int:
    # CJK characters take two columns in a monospace font.
    return sum(2 if ord(ch) >= 0x1100 else 1 for ch in text)


# Fields are immutable and mostly the same from mail to mail: render each once.
@functools.lru_cache(maxsize=8192)
def _field_text(f: Field) -> str:
    head = f"{f.label}. {f.prompt}"
    if f.mark:
        head += f" {f.mark}"
    lines = [head]
    lines += [_INDENT + note for note in f.notes]
    # "(1) label", never "1. label": an option line must not read as an answer line.
    lines += [f"{_INDENT}({n}) {label}" for n, label in f.options]
    if f.current:
        lines.append(f"{_INDENT}→ {f.current}")
    return "\n".join(lines)


def _entry_text(e: Entry) -> str:
    head = f"{e.label}. {e.prompt}" if e.prompt else f"{e.label}."
    line = f"{head}\n{_INDENT}→ {e.value}"
    if e.note:
        line += f"\n{_INDENT}({e.note})"
    return line


_STYLE = ("body{font-family:Arial,Helvetica,sans-serif;font-size:15px;line-height:1.45;"
          "color:#1a1a1a;max-width:46em}.q{margin:0 0 14px 0}.q p{margin:2px 0}"
          ".n,.o,.c{margin:2px 1.5em!important}.n,.m{color:#555;font-size:14px}"
          "pre{background:#f4f4f4;padding:6px 10px}.f{color:#777;font-size:12px}")


def render_html(doc: Doc) -> str:
    """The HTML alternative: the same blocks, right-to-left for Arabic."""
    esc = html.escape
    direction = "rtl" if doc.language in RTL_LANGUAGES else "ltr"
    parts = [f'<!DOCTYPE html><html lang="{esc(doc.language)}" dir="{direction}"><head>'
             f'<meta charset="utf-8"><style>{_STYLE}</style></head><body>']
    for block in doc.blocks:
        if isinstance(block, Heading):
            level = min(3, max(1, block.level))
            parts.append(f"<h{level}>{esc(block.text)}</h{level}>")
        elif isinstance(block, Para):
            cls = {"note": ' class="m"', "strong": ' style="font-weight:bold"'}.get(
                block.style, "")
            parts.append(f"<p{cls}>{_lines_html(block.text)}</p>")
        elif isinstance(block, Field):
            parts.append(_field_html(block))
        elif isinstance(block, Entry):
            note = f' <span class="m">({esc(block.note)})</span>' if block.note else ""
            prompt = f" {esc(block.prompt)}" if block.prompt else ""
            parts.append(f"<p><b>{esc(block.label)}.</b>{prompt}<br>&rarr; "
                         f"<b>{esc(block.value)}</b>{note}</p>")
        elif isinstance(block, Example):
            parts.append("<pre>" + esc("\n".join(block.lines)) + "</pre>")
    if doc.footer:
        parts.append(f'<hr><p class="f">{esc(doc.footer)}</p>')
    parts.append("</body></html>")
    return "\n".join(parts)


def _lines_html(text: str) -> str:
    return "<br>".join(html.escape(line) for line in text.split("\n"))


@functools.lru_cache(maxsize=8192)
def _field_html(f: Field) -> str:
    esc = html.escape
    mark = f" <b>{esc(f.mark)}</b>" if f.mark == "*" else (
        f' <span class="m">{esc(f.mark)}</span>' if f.mark else "")
    out = [f'<div class="q"><p><b>{esc(f.label)}.</b> {esc(f.prompt)}{mark}</p>']
    out += [f'<p class="n">{esc(note)}</p>' for note in f.notes]
    if f.options:
        out.append('<p class="o">' + "<br>".join(
            f"({esc(n)}) {esc(label)}" for n, label in f.options) + "</p>")
    if f.current:
        out.append(f'<p class="c">&rarr; <i>{esc(f.current)}</i></p>')
    out.append("</div>")
    return "".join(out)


# -- MIME --------------------------------------------------------------------------------------


def build_message(*, from_addr: str, to: str, subject: str, text: str, html_body: str | None,
                  message_id: str, reply_to: str | None = None, in_reply_to: str | None = None,
                  references: Sequence[str] = (), language: str | None = None,
                  date: datetime | None = None, auto_submitted: str = "auto-replied",
                  suppress: str = "All", extra: Sequence[tuple[str, str]] = ()) -> bytes:
    """The whole message as bytes, ready for SMTP DATA.

    from_addr is a header value (see format_address). Bodies are UTF-8 in base64 (no line
    may exceed the SMTP limit, every script survives). Headers are written directly: the
    standard library's header policy costs ~1 ms per header, more than everything else here.
    """
    headers = [
        ("From", from_addr), ("To", to), ("Subject", subject),
        ("Date", email.utils.format_datetime(date) if date
         else email.utils.formatdate(usegmt=True)),
        ("Message-ID", message_id),
    ]
    if reply_to:
        headers.append(("Reply-To", reply_to))
    if in_reply_to:
        headers.append(("In-Reply-To", in_reply_to))
    if references:
        headers.append(("References", " ".join(references)))
    if language:
        headers.append(("Content-Language", language))
    headers += list(extra)
    # RFC 3834: we are an automatic responder (or, for mail we start, "auto-generated");
    # Outlook is asked not to auto-reply to us (an invitation still wants its NDRs back).
    headers += [("Auto-Submitted", auto_submitted), ("X-Auto-Response-Suppress", suppress),
                (OWN_MARKER, "1"), ("MIME-Version", "1.0")]
    head = "".join(_header(name, value) for name, value in headers)
    text_part = _part("text/plain; charset=utf-8", text)
    if html_body is None:
        return (head + text_part).encode("ascii")
    boundary = "==capbot-" + hashlib.sha1(message_id.encode()).hexdigest()[:24]
    body = (f'Content-Type: multipart/alternative;\r\n boundary="{boundary}"\r\n\r\n'
            f"--{boundary}\r\n{text_part}\r\n--{boundary}\r\n"
            f"{_part('text/html; charset=utf-8', html_body)}\r\n--{boundary}--\r\n")
    return (head + body).encode("ascii")


def _header(name: str, value: str) -> str:
    value = " ".join(value.split())  # no CR/LF may reach the wire from a value
    if value.isascii():
        if len(name) + 2 + len(value) <= 78:
            return f"{name}: {value}\r\n"
        return _fold(name, value.split(" "))
    if name == "Subject":
        return _fold(name, encode_words(value))
    return SMTP.header_factory(name, value).fold(policy=SMTP)  # rare: non-ASCII addresses


def _fold(name: str, words: list[str]) -> str:
    """Fold at spaces so that lines stay under 78 characters where words allow."""
    lines, line = [], f"{name}:"
    for word in words:
        if len(line) + 1 + len(word) > 78 and line != f"{name}:":
            lines.append(line)
            line = ""
        line += " " + word
    lines.append(line)
    return "\r\n".join(lines) + "\r\n"


def encode_words(text: str) -> list[str]:
    """RFC 2047 encoded-words (UTF-8, base64), each at most 75 characters, never splitting
    a character."""
    words, chunk, size = [], [], 0
    for ch in text:
        n = len(ch.encode("utf-8"))
        if size + n > 39:  # 39 bytes -> 52 base64 characters -> a 64-character word
            words.append(chunk)
            chunk, size = [], 0
        chunk.append(ch)
        size += n
    if chunk:
        words.append(chunk)
    return ["=?utf-8?b?" + base64.b64encode("".join(c).encode("utf-8")).decode("ascii") + "?="
            for c in words]


def _part(content_type: str, text: str) -> str:
    data = base64.b64encode(text.replace("\r\n", "\n").replace("\n", "\r\n").encode("utf-8"))
    encoded = data.decode("ascii")
    lines = "\r\n".join(encoded[i:i + 76] for i in range(0, len(encoded), 76))
    return (f"Content-Type: {content_type}\r\nContent-Transfer-Encoding: base64\r\n\r\n"
            f"{lines}\r\n")


def format_address(display_name: str | None, addr: str) -> str:
    """A From header value: "Name <local@domain>", the name RFC 2047-encoded when needed."""
    if not display_name:
        return addr
    return email.utils.formataddr((display_name, addr), charset="utf-8")
