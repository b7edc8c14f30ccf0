"""Parse raw inbound email bytes into a neutral, fully decoded ParsedMail (pure, never raises)."""

from __future__ import annotations

import contextlib
import email
import email.parser
import email.policy
import email.utils
import functools
import hashlib
import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import Message

from bs4 import BeautifulSoup
from bs4.element import Comment, Declaration, Doctype, NavigableString, ProcessingInstruction, Tag

from .classify import (
    ASCII_LABELS,
    CHARSET_ALIASES,
    Classification,
    can_reply,
    classify,
    decode_payload,
    decode_words,
    raw_header,
    raw_headers,
)
from .quotes import strip_reply
from .tokens import find_token

__all__ = ["ParsedMail", "decode_payload", "html_to_text", "normalize_address", "parse_message"]

logger = logging.getLogger(__name__)

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_MSG_ID = re.compile(r"<([^<>\s]+)>")
_LANG = re.compile(r"^[a-z]{2,3}$")
_MAX_ID = 250
_SKIP_TAGS = {"head", "script", "style", "title", "template", "noscript", "svg", "object"}
_BLOCK_TAGS = {
    "p", "div", "tr", "table", "tbody", "thead", "tfoot", "ul", "ol", "dl", "dt", "dd",
    "h1", "h2", "h3", "h4", "h5", "h6", "pre", "section", "article", "header", "footer",
    "address", "center", "form", "fieldset", "figure", "main", "nav", "aside", "caption",
}  # fmt: skip
_WS = re.compile(r"[ \t\r\n\f\u00a0]+")
_NOISE_OPEN = re.compile(r"<!--|<(head|style|script)\b[^>]{0,1000}>", re.IGNORECASE)
_NOISE_CLOSE = {
    "": re.compile(r"-->"),
    "head": re.compile(r"</head\s*>", re.IGNORECASE),
    "style": re.compile(r"</style\s*>", re.IGNORECASE),
    "script": re.compile(r"</script\s*>", re.IGNORECASE),
}
HTML_LIMIT = 200_000


# email.policy.default re-parses a header on every access, and get_body()/get_param() read
# Content-Type a dozen times a message; header objects are immutable, so share them.
@functools.lru_cache(maxsize=2048)
def _cached_header(name: str, value: str) -> object:
    return email.policy.default.header_factory(name, value)


_POLICY = email.policy.default.clone(header_factory=_cached_header)


@dataclass(frozen=True, slots=True)
class ParsedMail:
    """One inbound email, decoded, with the respondent's own text and a loop-safety verdict."""

    message_id: str  # without <>; synthesized "sha256-…@capbot.invalid" when missing
    from_address: str  # normalized (see normalize_address); "" when there is none
    from_name: str
    to_addresses: tuple[str, ...]
    cc_addresses: tuple[str, ...]
    delivered_to: tuple[str, ...]
    reply_to: str | None
    subject: str
    in_reply_to: str | None
    references: tuple[str, ...]
    content_language: str | None  # primary subtag, lowercase: "fr" for "fr-CA"
    date: datetime | None  # timezone-aware
    body_text: str  # text/plain preferred, else HTML rendered as text
    body_type: str  # "plain", "html" or "" (no readable body, or too large)
    reply_text: str  # body_text without quoted history and signatures
    classification: Classification
    too_large: bool  # raw size above max_bytes: only headers were read
    size: int  # raw size in bytes
    token: str | None  # reply token found in Delivered-To/To/Cc/Subject, not yet verified
    defects: tuple[str, ...]  # names of the parser's defects, for the quarantine log
    message_id_synthesized: bool = False  # True when the mail had no usable Message-ID
    # Authentication-Results values, top to bottom (see authres.py: only ours is trusted)
    auth_results: tuple[str, ...] = ()

    @property
    def can_reply(self) -> bool:
        return can_reply(self.classification)


def normalize_address(addr: str) -> str:
    """Canonical form of an address: "Ann <Ann@Bücher.DE>" -> "ann@xn--bcher-kva.de"; "" if none.

    The whole address is lower-cased (local parts are case-insensitive in practice) and the domain
    IDNA-encoded with the standard library codec (IDNA 2003), so the form is stable everywhere.
    """
    if not addr:
        return ""
    text = addr.strip()
    if "<" in text or " " in text:
        _, text = email.utils.parseaddr(text)
    text = text.strip().strip("<>").strip()
    if text.lower().startswith("mailto:"):
        text = text[7:]
    if text.count("@") < 1:
        return ""
    local, _, domain = text.rpartition("@")
    local = local.strip().lower()
    domain = domain.strip().rstrip(".").lower()
    if not local or not domain:
        return ""
    # An unencodable domain keeps its Unicode form rather than losing the address.
    with contextlib.suppress(UnicodeError):
        domain = domain.encode("idna").decode("ascii")
    return f"{local}@{domain}"


def _clean(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return _CONTROL.sub("", text)


class _TextWriter:
    """Collects rendered HTML text as lines, with "> " for each level of <blockquote>."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.cur: list[str] = []
        self.depth = 0
        self.pending = ""  # list marker waiting for the item's first text

    def text(self, value: str) -> None:
        if not self.cur:
            value = value.lstrip()
            if not value:
                return
            if self.pending:
                value = self.pending + value
                self.pending = ""
        self.cur.append(value)

    def flush(self, force: bool = False) -> None:
        if self.cur or force:
            line = "".join(self.cur).strip()
            self.lines.append(("> " * self.depth + line).rstrip() if line else ">" * self.depth)
        self.cur = []

    def result(self) -> str:
        self.flush()
        out: list[str] = []
        for line in self.lines:
            if not line.strip(">").strip() and out and not out[-1].strip(">").strip():
                continue
            out.append(line)
        return "\n".join(out).strip("\n")


def _render(node: Tag, out: _TextWriter, pre: bool = False) -> None:
    counter = 0
    if node.name == "ol":
        try:
            counter = int(str(node.get("start") or 1)) - 1
        except ValueError:
            counter = 0
    for child in node.children:
        if isinstance(child, Comment | Declaration | Doctype | ProcessingInstruction):
            continue
        if isinstance(child, NavigableString):
            value = str(child)
            if pre:
                parts = value.replace("\r\n", "\n").split("\n")
                for k, part in enumerate(parts):
                    if k:
                        out.flush(force=True)
                    if part:
                        out.cur.append(part)
            else:
                out.text(_WS.sub(" ", value))
            continue
        if not isinstance(child, Tag):
            continue
        name = (child.name or "").lower()
        if name in _SKIP_TAGS:
            continue
        if name == "br":
            out.flush(force=True)
        elif name == "hr":
            out.flush()
            out.lines.append("_" * 32)
        elif name == "blockquote":
            out.flush()
            out.depth += 1
            _render(child, out, pre)
            out.flush()
            out.depth -= 1
        elif name == "li":
            out.flush()
            if node.name == "ol":
                counter += 1
                out.pending = f"{counter}. "
            else:
                out.pending = "- "
            _render(child, out, pre)
            out.flush()
            out.pending = ""
        elif name in ("td", "th"):
            _render(child, out, pre)
            out.text(" ")
        elif name in _BLOCK_TAGS:
            out.flush()
            _render(child, out, pre or name == "pre")
            out.flush()
        else:
            _render(child, out, pre)


def _drop_noise(html: str) -> str:
    """Remove comments, <head>, <style> and <script> blocks in one linear pass."""
    out: list[str] = []
    pos = 0
    unclosed: set[str] = set()  # kinds with no closer after some point: never search again
    while (opener := _NOISE_OPEN.search(html, pos)) is not None:
        out.append(html[pos : opener.start()])
        kind = (opener.group(1) or "").lower()
        closer = None if kind in unclosed else _NOISE_CLOSE[kind].search(html, opener.end())
        if closer is None:
            # Unclosed: drop only the opener (a missing </head> must not swallow the body).
            unclosed.add(kind)
            pos = opener.end()
            continue
        out.append(" ")
        pos = closer.end()
    out.append(html[pos:])
    return "".join(out)


def html_to_text(html: str, limit: int = HTML_LIMIT) -> str:
    """Readable text of an HTML body: block elements and <br> break lines, quotes get "> ".

    BeautifulSoup builds ~10,000 elements a second here, so <head>, <style>, <script> and comments
    (Outlook's are huge) go first, and only the first limit characters are read: the
    respondent's text is at the top, the long quoted history below.
    """
    html = _drop_noise(html)[:limit]
    soup = BeautifulSoup(html, "html.parser")
    out = _TextWriter()
    try:
        _render(soup, out)
        text = out.result()
    except RecursionError:  # absurdly deep nesting: fall back to plain text extraction
        text = soup.get_text("\n")
    return text.replace("\u00a0", " ")


def _unflow(text: str, delsp: bool) -> str:
    """Undo RFC 3676 format=flowed soft line breaks, so a long answer stays on one line."""
    out: list[str] = []
    cur: str | None = None
    cur_depth = 0

    def emit(depth: int, value: str) -> None:
        out.append(f"{'>' * depth} {value}" if depth else value)

    for line in text.split("\n"):
        stripped = line.lstrip(">")
        depth = len(line) - len(stripped)
        content = stripped[1:] if stripped.startswith(" ") else stripped
        if cur is not None and depth != cur_depth:
            emit(cur_depth, cur)
            cur = None
        if content == "-- ":  # the signature separator is never a soft break
            if cur is not None:
                emit(cur_depth, cur)
                cur = None
            emit(depth, content)
            continue
        cur = content if cur is None else cur + content
        cur_depth = depth
        if content.endswith(" "):
            if delsp:
                cur = cur[:-1]
            continue
        emit(depth, cur)
        cur = None
    if cur is not None:
        emit(cur_depth, cur)
    return "\n".join(out)


def _addresses(value: str) -> list[tuple[str, str]]:
    """(display name, addr-spec) pairs of an address header; tolerant of broken syntax."""
    # Encoded words are parsed as atoms and decoded afterwards, so a decoded name holding
    # a comma or "<" cannot split or fake an address.
    try:
        pairs = [(decode_words(n), a) for n, a in email.utils.getaddresses([value])]
    except Exception:
        pairs = []
    if not any("@" in addr for _, addr in pairs):
        try:
            header = email.policy.default.header_factory("to", value)
            pairs = [(a.display_name, a.addr_spec) for a in header.addresses]
        except Exception:
            pairs = []
    return [(name.strip(), addr) for name, addr in pairs if "@" in addr]


def _address_list(msg: Message, name: str, hint: str | None) -> tuple[str, ...]:
    out: list[str] = []
    for value in raw_headers(msg, name, hint):
        for _, addr in _addresses(value):
            norm = normalize_address(addr)
            if norm and norm not in out:
                out.append(norm)
    return tuple(out)


def _msg_ids(value: str | None) -> list[str]:
    if not value:
        return []
    ids = _MSG_ID.findall(value)
    return ids or [t.strip("<>") for t in value.split() if t.strip("<>")]


def _language(value: str | None) -> str | None:
    if not value:
        return None
    primary = value.split(",")[0].strip().split("-")[0].split("_")[0].strip().lower()
    return primary if _LANG.match(primary) else None


def _date(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed


def _synthetic_id(data: bytes) -> str:
    return f"sha256-{hashlib.sha256(data).hexdigest()[:32]}@capbot.invalid"


def _header_end(data: bytes) -> int:
    ends = [i for i in (data.find(b"\r\n\r\n"), data.find(b"\n\n")) if i >= 0]
    return min(ends) + 2 if ends else min(len(data), 65_536)


def _charset_hint(msg: Message) -> str | None:
    """The first declared body charset, used to decode raw 8-bit headers that are not UTF-8."""
    for part in msg.walk():
        charset = part.get_content_charset()
        if charset:
            label = CHARSET_ALIASES.get(charset, charset)
            if label not in ASCII_LABELS:
                return label
    return None


def _body(msg: Message) -> tuple[str, str, Message | None]:
    part = msg.get_body(("plain", "html"))
    if part is None:
        return "", "", None
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes | bytearray):
        return "", "", part
    text = _clean(decode_payload(bytes(payload), part.get_content_charset()))
    if part.get_content_subtype() == "html":
        if len(text) > HTML_LIMIT:
            logger.info("HTML body of %d characters read only in part", len(text))
        return html_to_text(text), "html", part
    if str(part.get_param("format", "") or "").lower() == "flowed":
        text = _unflow(text, str(part.get_param("delsp", "") or "").lower() == "yes")
    return text, "plain", part


def parse_message(raw: bytes, *, max_bytes: int = 1_000_000) -> ParsedMail:
    """Parse raw RFC 5322 bytes. Never raises: broken input comes back classified "malformed"."""
    try:
        data = raw.encode("utf-8", "surrogateescape") if isinstance(raw, str) else bytes(raw)
    except Exception:
        data = b""
    try:
        return _parse(data, max_bytes)
    except Exception as exc:
        logger.warning("unparseable mail (%d bytes): %r", len(data), exc)
        return _broken(data, max_bytes, f"parser error: {type(exc).__name__}: {exc}"[:300])


def _broken(data: bytes, max_bytes: int, reason: str) -> ParsedMail:
    # Keep a real Message-ID if one is readable, so a redelivery is still recognised.
    found = re.search(rb"(?im)^message-id:\s*<([^<>\s]{1,%d})>" % _MAX_ID, data[:65_536])
    message_id = found.group(1).decode("ascii", "replace") if found else _synthetic_id(data)
    return ParsedMail(
        message_id=message_id,
        from_address="",
        from_name="",
        to_addresses=(),
        cc_addresses=(),
        delivered_to=(),
        reply_to=None,
        subject="",
        in_reply_to=None,
        references=(),
        content_language=None,
        date=None,
        body_text="",
        body_type="",
        reply_text="",
        classification=Classification("malformed", reason),
        too_large=len(data) > max_bytes,
        size=len(data),
        token=None,
        defects=(),
        message_id_synthesized=found is None,
    )


def _parse(data: bytes, max_bytes: int) -> ParsedMail:
    size = len(data)
    too_large = size > max_bytes
    if too_large:
        # Headers only: enough to classify and answer "too large" without decoding megabytes.
        parser = email.parser.BytesHeaderParser(policy=_POLICY)
        msg = parser.parsebytes(data[: _header_end(data)])
    else:
        msg = email.message_from_bytes(data, policy=_POLICY)

    hint = None if too_large else _charset_hint(msg)
    ids = _msg_ids(raw_header(msg, "Message-ID"))
    message_id = ids[0] if ids else _synthetic_id(data)
    if len(message_id) > _MAX_ID:
        # Absurd ids would not fit the inbound log; a hash of the id still de-duplicates.
        message_id = _synthetic_id(message_id.encode("utf-8", "surrogateescape"))

    from_name, from_address = "", ""
    from_value = raw_header(msg, "From", hint)
    if from_value:
        pairs = _addresses(from_value)
        if pairs:
            from_name, from_address = pairs[0][0], normalize_address(pairs[0][1])

    reply_to = _address_list(msg, "Reply-To", hint)
    to_addresses = _address_list(msg, "To", hint)
    cc_addresses = _address_list(msg, "Cc", hint)
    delivered_to = _address_list(msg, "Delivered-To", hint)
    subject_raw = raw_header(msg, "Subject", hint)
    subject = _clean(decode_words(subject_raw)).strip() if subject_raw else ""

    body_text, body_type, part = ("", "", None) if too_large else _body(msg)
    language = _language(raw_header(msg, "Content-Language"))
    if language is None and part is not None and part is not msg:
        language = _language(raw_header(part, "Content-Language"))

    token = None
    for candidate in (*delivered_to, *to_addresses, *cc_addresses, subject):
        token = find_token(candidate)
        if token:
            break

    defects = tuple(
        dict.fromkeys(type(d).__name__ for p in msg.walk() for d in getattr(p, "defects", ()))
    )
    return ParsedMail(
        message_id=message_id,
        from_address=from_address,
        from_name=_clean(from_name),
        to_addresses=to_addresses,
        cc_addresses=cc_addresses,
        delivered_to=delivered_to,
        reply_to=reply_to[0] if reply_to else None,
        subject=subject,
        in_reply_to=next(iter(_msg_ids(raw_header(msg, "In-Reply-To"))), None),
        references=tuple(_msg_ids(raw_header(msg, "References"))),
        content_language=language,
        date=_date(raw_header(msg, "Date")),
        body_text=body_text,
        body_type=body_type,
        reply_text=strip_reply(body_text) if body_text else "",
        classification=classify(msg),
        too_large=too_large,
        size=size,
        token=token,
        defects=defects,
        message_id_synthesized=not ids,
        auth_results=tuple(raw_headers(msg, "Authentication-Results")),
    )
