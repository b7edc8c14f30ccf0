"""Strip quoted history and signatures from an email reply, in ar, en, es, fr, ru and zh."""

from __future__ import annotations

import re

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
_WROTE_END = re.compile(
    r"(?:\bwrote|\ba écrit|\bescribió|\bescribio|\bschrieb|\bha scritto|\bescreveu|\bschreef"
    r"|написал\(а\)|написала|написал|пишет|писал\(а\)"
    r"|写道|寫道|كتبت|كتب)\s?[:：]$",
    re.IGNORECASE,
)
# Gmail in Russian has no verb: "пн, 3 мар. 2025 г. в 10:00, X <x@y>:".
_RU_GMAIL = re.compile(r"\d{4}\s?г\.?,?\s?в\s?\d{1,2}:\d{2}.*[:：]$")
# The Bat! (common in Russia): "Вы писали 3 марта 2025 г., 10:00:".
_RU_BAT = re.compile(r"^вы писали\b.*[:：]$", re.IGNORECASE)
# Apple Mail / Thunderbird in Arabic put the verb before the name: "في …، كتب X <x@y>:".
_AR_APPLE = re.compile(r"^في\s.*\sكتبت?\s.*[:：]$")
# Language-neutral: an address in <…>, (…) or [mailto:…], a clock time, and a final colon.
_ADDR = re.compile(r"<[^<>\s]+@[^<>\s]+>|\(<?[^()\s]+@[^()\s]+?>?\)|\[mailto:[^\]\s]+\]")
_TIME = re.compile(r"\d{1,2}:\d{2}")
_ENDS_COLON = re.compile(r"[:：]$")
# Words that open an attribution, used to accept a header wrapped over several lines.
_STARTERS = re.compile(r"^(?:on|le|el|am|il|em|op|在|于|في)\s", re.IGNORECASE)
_YEAR = re.compile(r"(?:19|20)\d{2}")

# --- Outlook ------------------------------------------------------------
_ORIGINAL = re.compile(
    r"^[-–—_=]{2,}\s*(?:original message|original-nachricht|message d['’]origine"
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
_SEPARATOR = re.compile(r"^(?:_{10,}|-{10,}|—{5,})$")
_LABELS = {
    "from": r"from|de|von|от|发件人|寄件者|寄件人|من",
    "sent": r"sent|date|envoyé|enviado|fecha|отправлено|дата|发送时间|日期|时间|寄件日期|"
    r"تم الإرسال|التاريخ|أرسل|gesendet|datum",
    "to": r"to|à|a|para|кому|收件人|إلى|الى|an",
    "cc": r"cc|копия|抄送|副本|نسخة|نسخة إلى",
    "subject": r"subject|objet|asunto|тема|主题|主題|主旨|الموضوع|betreff",
}
# "From: x", "*From:* x" (Outlook HTML rendered as text), "De : x", "发件人：x". One regex for
# all labels: the group that matched names the label.
_LABEL_RE = re.compile(
    r"^\*?(?:"
    + "|".join(f"(?P<{key}>{alts})" for key, alts in _LABELS.items())
    + r")\*?\s?(?::\*?(?:\s|$)|：)",
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
    return _SPACES.sub(" ", _BIDI.sub("", line)).strip()


def is_answer_line(line: str) -> bool:
    """True for a line shaped like a questionnaire answer ("1. Maria", "12: 2023-05")."""
    return bool(_ANSWER.match(_norm(line)))


def _is_quoted(norm: str) -> bool:
    return norm.startswith(">")


def _is_attribution(text: str) -> bool:
    if not text or len(text) > 320 or _ANSWER.match(text) or _is_quoted(text):
        return False
    if any(rx.search(text) for rx in (_WROTE_END, _RU_GMAIL, _RU_BAT, _AR_APPLE)):
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


def _is_header_block(norm: list[str], i: int) -> bool:
    """An Outlook "From: / Sent: / To: / Subject:" block starts at line i (in any of the six)."""
    if _label(norm[i]) != "from":
        return False
    seen: set[str] = set()
    checked = 0
    # Outlook blocks are contiguous, but a long To: list may wrap onto extra lines.
    for j in range(i + 1, min(len(norm), i + 12)):
        if not norm[j]:
            continue
        checked += 1
        key = _label(norm[j])
        if key in ("sent", "to", "subject"):
            seen.add(key)
        if checked >= 6:
            break
    # Two distinct labels besides From: an answer such as "De: mi ministerio" never qualifies.
    return len(seen) >= 2


def _find_marker(lines: list[str], norm: list[str], start: int) -> tuple[int, int, str] | None:
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
                if i + k >= n or not norm[i + k] or _is_quoted(norm[i + k]):
                    break
                joined = f"{joined} {norm[i + k]}"
                if _is_attribution(joined):
                    strong = _STARTERS.match(text) or "@" in text or text.endswith("<")
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
    while out and (not out[-1] or _MOBILE.match(_norm(out[-1]))):
        out.pop()
    return out


def _unquoted(lines: list[str], norm: list[str], start: int, end: int) -> list[str]:
    return [lines[i] for i in range(start, end) if not _is_quoted(norm[i])]


def strip_reply(text: str) -> str:
    """Return the respondent's own text: quoted history, attributions and signatures removed.

    The text above the first quote marker is kept. When nothing is left above it (bottom-posting)
    or only prose without answer lines is (a greeting, then answers interleaved with the quote),
    the unquoted lines between ``>``-quoted ones are kept too, up to the next marker.
    """
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    norm = [_norm(line) for line in lines]
    n = len(lines)
    first_quoted = next((i for i in range(n) if _is_quoted(norm[i])), n)
    marker = _find_marker(lines, norm, 0)
    cut = min(first_quoted, marker[0] if marker else n)
    top = _tidy(lines[:cut])

    region: list[str] = []
    # Below an attribution (or a bare ">" block) the old text is ">"-quoted, so unquoted lines
    # there are the respondent's. Below an Outlook header block or "-- " everything is old.
    if cut < n and (marker is None or marker[0] > first_quoted or marker[2] == "attribution"):
        start = first_quoted if marker is None or marker[0] > first_quoted else marker[1]
        nxt = _find_marker(lines, norm, start)
        region = _tidy(_unquoted(lines, norm, start, nxt[0] if nxt else n))

    if not top:
        kept = region
    elif region and not any(map(is_answer_line, top)) and any(map(is_answer_line, region)):
        kept = [*top, "", *region]
    else:
        kept = top
    return "\n".join(kept)
