"""Strip quoted history and signatures from an email reply, in ar, en, es, fr, ru and zh."""

from __future__ import annotations

import re
from collections.abc import Sequence

__all__ = ["is_answer_line", "strip_reply"]

# Bidi controls (Arabic clients sprinkle RLM/LRM around names and dates) and odd spaces
# (French puts NBSP / narrow NBSP before ":") are noise for every rule below.
_BIDI = re.compile("[\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufeff]")
_SPACES = re.compile(r"[\s\u00a0\u202f\u2007\u3000]+")

# A respondent's answer line: "1. Maria", "4) 2", "12: 2023-05", "3、张三", "١. نعم".
# Needs a separator followed by a space or the end, so "03.03.2025 10:00, X wrote:" is no answer.
# CJK punctuation needs no space after it.
_ANSWER = re.compile(r"^\d{1,3}\s*(?:[.):](?:\s|$)|[：．。、）])")

# --- "On … wrote:" attribution lines ----------------------------------------
_VERBS = (
    r"(?:\bwrote|\ba écrit|\bescribió|\bescribio|\bschrieb|\bha scritto|\bescreveu"
    r"|\bschreef|\bskrev|\bkirjoitti|\bírta|\bnapisał\(a\)|\bnapisał|\bnapisala"
    r"|написал\(а\)|написала|написал|написав|пишет|писал\(а\)"
    r"|写道|寫道|撰写|كتبت|كتب)"
)
_WROTE_END = re.compile(_VERBS + r"\s?[:：]$", re.IGNORECASE)
# "wrote" with no colon (some webmails, Zoho's "---- On … wrote ----"): only with an address, or
# a date and a time, on the same line, so prose ending in "wrote" stays text.
_WROTE_BARE = re.compile(_VERBS + r"$", re.IGNORECASE)
# Zoho and some Android clients frame the attribution: "---- On … wrote ----".
_DASH_FRAME = re.compile(r"^[-–—]{2,}\s*|\s*[-–—]{2,}$")
# Gmail in Russian has no verb: "пн, 3 мар. 2025 г. в 10:00, X <x@y>:".
_RU_GMAIL = re.compile(r"\d{4}\s?г\.?,?\s?в\s?\d{1,2}:\d{2}.*[:：]$")
# The Bat! (common in Russia): "Вы писали 3 марта 2025 г., 10:00:".
_RU_BAT = re.compile(r"^вы писали\b.*[:：]$", re.IGNORECASE)
# Apple Mail / Thunderbird in Arabic put the verb before the name: "في …، كتب X <x@y>:".
_AR_APPLE = re.compile(r"^في\s.*\sكتبت?\s.*[:：]$")
# Language-neutral: an address in <…>, (…) or [mailto:…], a clock time, and a final colon.
_ADDR = re.compile(r"<\s?[^<>\s]+@[^<>\s]+\s?>|\(<?[^()\s]+@[^()\s]+?>?\)|\[mailto:[^\]\s]+\]")
# Clock times as "10:00" or, in Russian, German and Nordic clients, "10.00".
_TIME = re.compile(r"\b\d{1,2}[:.]\d{2}\b")
_ENDS_COLON = re.compile(r"[:：]$")
# Words that open an attribution, used to accept a header wrapped over several lines.
_STARTERS = re.compile(r"^(?:on|le|el|am|il|em|op|den|in data|在|于|في)\s", re.IGNORECASE)
# An attribution glued to the end of the reply's last line: "Thanks. On Mon, … wrote:".
_INLINE_START = re.compile(r"(?:\s|[-–—]{2,}\s?)(?=(?:On|Le|El|Am|Em|Op)\s)")
_YEAR = re.compile(r"(?:19|20)\d{2}")

# --- Outlook ------------------------------------------------------------
_ORIGINAL = re.compile(
    r"^[-–—_=]{2,}\s*(?:original message|reply message|original-nachricht"
    r"|ursprüngliche nachricht|antwort nachricht|oprindelig (?:meddelelse|besked)"
    r"|originalmeddelande|alkuperäinen viesti|messaggio originale|oorspronkelijk bericht"
    r"|mensagem original|wiadomość oryginalna|message d['’]origine"
    r"|mensaje original|исходное сообщение|原始邮件|原始郵件|الرسالة الأصلية"
    r"|forwarded message|message transféré|mensaje reenviado|пересылаемое сообщение"
    r"|переадресованное сообщение|转发邮件|转发的邮件|الرسالة المعاد توجيهها|رسالة معاد توجيهها)"
    r"\s*[-–—_=]{2,}$",
    re.IGNORECASE,
)
_FORWARD = re.compile(
    r"^(?:begin forwarded message|début du message (?:réexpédié|transféré)"
    r"|inicio del mensaje reenviado|начало (?:пересылаемого|переадресованного) сообщения"
    r"|以下是转发的邮件|转发的邮件|بداية الرسالة المعاد توجيهها)\s?[:：]?$",
    re.IGNORECASE,
)
_LIST_FOOTER = re.compile(r"^_{2,}$")  # Mailman's footer rule, below the quote
_SEPARATOR = re.compile(r"^(?:_{10,}|-{10,}|—{5,})$")
_LABELS = {
    "from": r"from|de|von|от|发件人|寄件者|寄件人|من|van|da|fra|från|od|lähettäjä",
    "sent": r"sent|date|envoyé le|envoyé|enviado el|enviado|fecha|отправлено|дата|发送时间|日期|"
    r"时间|寄件日期|تم الإرسال|التاريخ|أرسل|gesendet|datum|dato|data|inviato|verzonden|"
    r"sendt|skickat|wysłano|lähetetty",
    "to": r"to|à|a|para|кому|收件人|إلى|الى|an|aan|til|till|do|vastaanottaja",
    "cc": r"cc|копия|抄送|副本|نسخة|نسخة إلى|kopie|kopia",
    "subject": r"subject|objet|asunto|тема|主题|主題|主旨|الموضوع|betreff|onderwerp|oggetto|emne|"
    r"ämne|temat|aihe|assunto",
}
# "From: x", "*From:* x" (Outlook HTML rendered as text), "De : x", "发件人：x". One regex for
# all labels: the group that matched names the label.
_LABEL_RE = re.compile(
    r"^\*?(?:"
    + "|".join(f"(?P<{key}>{alts})" for key, alts in _LABELS.items())
    # "Objet :x" (French spacing, nothing after the colon's space) and "Objet: x" alike.
    + r")\*?(?:\s?:\*?(?:\s|$)|\s:|：)",
    re.IGNORECASE,
)

# --- Signatures ---------------------------------------------------------
_MOBILE = re.compile(
    r"^(?:"
    r"sent from (?:my|outlook|yahoo|mail|gmail|proton|aol|samsung|huawei).{0,60}"
    r"|sent (?:via|with|using) .{1,60}"
    r"|get outlook for (?:ios|android).{0,60}"
    r"|envoyé (?:de|depuis|à partir de) .{1,60}"
    r"|(?:télécharger|obtenir) outlook pour (?:ios|android).{0,60}"
    r"|enviado (?:desde|con|a través de) .{1,60}"
    r"|obt(?:én|en|ener) outlook para (?:ios|android).{0,60}"
    r"|отправлено (?:с|со|из|через) .{1,60}"
    r"|(?:получить|скачать|загрузите) outlook для (?:ios|android).{0,60}"
    r"|(?:发自|發自|来自|來自|从)我的.{1,40}"
    r"|(?:发自|發自|来自|來自) ?(?:outlook|网易|qq|邮箱|手机|华为|小米|iphone|ipad).{0,40}"
    r"|获取 ?(?:outlook|ios 版|android 版).{0,60}"
    r"|(?:أرسلت|ارسلت|أُرسلت|مرسل|مُرسل|مرسلة|تم الإرسال|تم إرسال|تم ارسال|تم الارسال)"
    r" (?:من|عبر|بواسطة) .{1,60}"
    r"|(?:احصل على|الحصول على) outlook .{0,60}"
    r")$",
    re.IGNORECASE,
)


def _norm(line: str) -> str:
    """Bidi marks removed, whitespace runs made one space (str.split's whitespace is \\s):
    the same as _SPACES.sub, three times faster on the hundreds of lines of a quoted
    history."""
    if not line.isascii():
        line = _BIDI.sub("", line)
    return " ".join(line.split())


def is_answer_line(line: str) -> bool:
    """True for a line shaped like a questionnaire answer ("1. Maria", "12: 2023-05")."""
    return bool(_ANSWER.match(_norm(line)))


def _is_quoted(norm: str) -> bool:
    return norm.startswith(">")


def _is_own_line(line: str) -> bool:
    """Whether _norm(line) is neither empty nor ">"-quoted, without normalizing it all."""
    if line.startswith(">"):  # most of a quoted form: neither space nor a bidi mark first
        return False
    head = (line if line.isascii() else _BIDI.sub("", line)).lstrip()
    return bool(head) and not head.startswith(">")


def _is_attribution(text: str) -> bool:
    if not text or len(text) > 320 or _ANSWER.match(text) or _is_quoted(text):
        return False
    framed = len(_DASH_FRAME.findall(text)) == 2  # "---- John Smith wrote ----"
    text = _DASH_FRAME.sub("", text)
    if framed and _WROTE_BARE.search(text):
        return True
    if any(rx.search(text) for rx in (_WROTE_END, _RU_GMAIL, _RU_BAT, _AR_APPLE)):
        return True
    if _WROTE_BARE.search(text) and (
        _ADDR.search(text) or (_TIME.search(text) and _YEAR.search(text))
    ):
        return True
    return bool(_ENDS_COLON.search(text) and _ADDR.search(text) and _TIME.search(text))


def _may_start_attribution(norm: str) -> bool:
    """Whether a line could be the first part of an attribution wrapped over several lines."""
    if not norm or _ANSWER.match(norm) or _is_quoted(norm) or _ENDS_COLON.search(norm):
        return False
    return bool(
        _STARTERS.match(norm)
        or "@" in norm
        or norm.endswith("<")
        or _TIME.search(norm)
        or _YEAR.search(norm)
    )


def _label(norm: str) -> str | None:
    if ":" not in norm and "：" not in norm:
        return None
    match = _LABEL_RE.match(norm)
    return match.lastgroup if match else None


def _is_header_block(norm: Sequence[str], i: int) -> bool:
    """An Outlook "From: / Sent: / To: / Subject:" block starts at line i (in any of the six).

    Some clients put the date first ("Date: … / From: … / To: … / Subject: …")."""
    first = _label(norm[i])
    if first not in ("from", "sent"):
        return False
    seen: set[str] = {first}
    dated = first == "sent" and _is_dated(norm[i])
    checked = 0
    # Outlook blocks are contiguous, but a long To: list may wrap onto extra lines.
    for j in range(i + 1, min(len(norm), i + 12)):
        if not norm[j]:
            continue
        checked += 1
        key = _label(norm[j])
        if key in ("from", "sent", "to", "subject"):
            seen.add(key)
            dated = dated or (key == "sent" and _is_dated(norm[j]))
        if checked >= 6:
            break
    # From and two other labels, or two with a full date ("Date: Wed, 16 May 2012 00:15"):
    # an answer such as "De: mi ministerio" or "From: us / To: you" never qualifies.
    return ("from" in seen and len(seen) >= 3) or (dated and len(seen) >= 2)


def _is_dated(norm: str) -> bool:
    return bool(_YEAR.search(norm) and _TIME.search(norm))


def _find_marker(lines: list[str], norm: Sequence[str], start: int) -> tuple[int, int, str] | None:
    """First quote marker at or after start: (first line, line after it, kind)."""
    n = len(lines)
    for i in range(start, n):
        text = norm[i]
        if not text or _is_quoted(text):
            continue
        if lines[i].rstrip() == "--" or lines[i] == "-- ":
            return i, i + 1, "signature"
        if _ORIGINAL.match(text) or _FORWARD.match(text):
            return i, i + 1, "outlook"
        if _SEPARATOR.match(text):
            nxt = next((j for j in range(i + 1, n) if norm[j]), None)
            if nxt is not None and _is_header_block(norm, nxt):
                return i, nxt, "outlook"
            continue
        if _is_header_block(norm, i):
            return i, i + 1, "outlook"
        if _is_attribution(text):
            return i, i + 1, "attribution"
        if _may_start_attribution(text):
            # Clients wrap long attributions: "On Mon, … Bot <" / "bot@example.org> wrote:".
            joined = text
            for k in (1, 2):
                # ">:" is the address's closing bracket wrapped onto a line, not a quote.
                if (
                    i + k >= n
                    or not norm[i + k]
                    or (_is_quoted(norm[i + k]) and norm[i + k] != ">:")
                ):
                    break
                joined = f"{joined} {norm[i + k]}"
                if _is_attribution(joined):
                    strong = (
                        _STARTERS.match(text)
                        or "@" in text
                        or text.endswith("<")
                        or (_TIME.search(text) and _YEAR.search(text))
                    )
                    if strong or not _is_attribution(norm[i + k]):
                        return i, i + k + 1, "attribution"
                    break
    return None


def _tidy(lines: list[str]) -> list[str]:
    """Right-strip lines, collapse blank runs, drop blank edges and trailing mobile signatures."""
    out: list[str] = []
    for line in lines:
        line = line.rstrip()
        if not line and (not out or not out[-1]):
            continue
        out.append(line)
    while out and (not out[-1] or _is_device_signature(out[-1])):
        out.pop()
    return out


def _is_device_signature(line: str) -> bool:
    """ "Sent from my iPhone" and the like; not prose that starts so ("Sent from my desk, …")."""
    norm = _norm(line)
    return bool(_MOBILE.match(norm)) and "," not in norm and len(norm.split()) <= 8


def _split_inline_attribution(lines: list[str]) -> list[str]:
    """Put an attribution glued to the end of a reply line on a line of its own.

    Only when the quote follows (the next line is ">"-quoted) or the tail names an address,
    so that an answer such as "5. Le 3 mars 2025 à 10:00, X a écrit :" stays as it is."""
    out: list[str] = []
    for k, line in enumerate(lines):
        norm = _norm(line)
        if not norm or _is_quoted(norm):
            out.append(line)
            continue
        nxt = next((_norm(x) for x in lines[k + 1 : k + 4] if _norm(x)), "")
        for match in _INLINE_START.finditer(line):
            head, tail = line[: match.start()].rstrip(" -–—"), line[match.end() :]
            # The head must not be the attribution's own beginning ("On Mon, … at 10:00 Am…").
            head_norm = _norm(head)
            if (
                head_norm
                and not _may_start_attribution(head_norm)
                and not _TIME.search(head_norm)
                and _is_attribution(_norm(tail))
                and (_is_quoted(nxt) or (_ADDR.search(tail) and not _ANSWER.match(norm)))
            ):
                out += [head, tail]
                break
        else:
            out.append(line)
    return out


def _unquoted(lines: list[str], norm: Sequence[str], start: int, end: int) -> list[str]:
    return [lines[i] for i in range(start, end) if not _is_quoted(norm[i])]


def _own_paragraphs(
    lines: list[str], norm: Sequence[str], start: int, end: int, last: bool
) -> list[str]:
    """Paragraphs between ">" blocks that hold no quoted line: the respondent's interleaved
    prose. A line touching a ">" line is a quoted line the client wrapped ("…pharetra d" /
    "ignissim odio?"), not a reply. A mailing-list footer ("____" line) ends the reply, and
    so does the last ">" line when another quote follows (older, unmarked history)."""
    stop = end
    if not last:
        stop = max((k + 1 for k in range(start, end) if _is_quoted(norm[k])), default=start)
    out: list[str] = []
    para: list[int] = []
    for k in [*range(start, stop), None]:
        if k is not None and norm[k] and _LIST_FOOTER.match(norm[k]):
            k = None
            stop = -1
        if k is None or not norm[k]:
            if para and not any(_is_quoted(norm[j]) for j in para):
                out += [lines[j] for j in para] + [""]
            para = []
            if stop == -1:
                break
            continue
        para.append(k)
    return out


class _Norm(Sequence[str]):
    """The lines' _norm, each made when first read: answers above a quoted form are found
    without normalizing the hundreds of lines of the quote."""

    __slots__ = ("_done", "_lines")

    def __init__(self, lines: list[str]) -> None:
        self._lines = lines
        self._done: dict[int, str] = {}

    def __len__(self) -> int:
        return len(self._lines)

    def __getitem__(self, i: int) -> str:
        found = self._done.get(i)
        if found is None:
            found = self._done[i] = _norm(self._lines[i])
        return found


def strip_reply(text: str) -> str:
    """Return the respondent's own text: quoted history, attributions and signatures removed.

    The text above the first quote marker is kept. When nothing is left above it (bottom-posting)
    or only prose without answer lines is (a greeting, then answers interleaved with the quote),
    the unquoted lines between ``>``-quoted ones are kept too, up to the next marker.
    """
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    # Only unquoted lines are ever split, so the quoted history (most of a reply that quotes
    # the whole form) need not be searched for a glued attribution.
    if any(_INLINE_START.search(line) for line in lines if _is_own_line(line)):
        lines = _split_inline_attribution(lines)
    norm = _Norm(lines)
    n = len(lines)
    first_quoted = next((i for i in range(n) if _is_quoted(norm[i])), n)
    marker = _find_marker(lines, norm, 0)
    cut = min(first_quoted, marker[0] if marker else n)
    top = _tidy(lines[:cut])
    if any(map(is_answer_line, top)):
        # Answers above the quote: they are the reply, whatever is below (the rules below
        # keep `top` whenever it holds an answer line), so the quoted part is not read.
        return "\n".join(top)

    region: list[str] = []
    prose: list[str] = []
    # Below an attribution (or a bare ">" block) the old text is ">"-quoted, so unquoted lines
    # there are the respondent's. Below an Outlook header block or "-- " everything is old.
    if cut < n and (marker is None or marker[0] > first_quoted or marker[2] == "attribution"):
        start = first_quoted if marker is None or marker[0] > first_quoted else marker[1]
        nxt = _find_marker(lines, norm, start)
        end = nxt[0] if nxt else n
        region = _tidy(_unquoted(lines, norm, start, end))
        # Unquoted text after an attribution with no ">" line below it is old text whose
        # marks the client dropped; in paragraphs of its own between ">" blocks it is the
        # respondent's, interleaved.
        if (
            top
            and not any(map(is_answer_line, region))
            and any(_is_quoted(norm[k]) for k in range(start, end))
        ):
            prose = _tidy(_own_paragraphs(lines, norm, start, end, last=nxt is None))

    if not top:
        kept = region
    elif region and not any(map(is_answer_line, top)) and any(map(is_answer_line, region)):
        kept = [*top, "", *region]
    elif prose and not any(map(is_answer_line, top)):
        kept = [*top, "", *prose]
    else:
        kept = top
    return "\n".join(kept)
