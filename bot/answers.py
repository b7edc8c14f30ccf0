"""Reading typed answers: digit and text normalization, parsing and validation per type."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit

from babel import Locale
from babel.numbers import list_currencies

from bot.countries import country_table
from bot.i18n import Translations, fold
from bot.questionnaire import Option, Question, Questionnaire

YEAR_MIN, YEAR_MAX = 1990, 2100
_BIDI_AND_INVISIBLE = dict.fromkeys(
    map(ord, "\u200b\u200c\u200d\u200e\u200f\u202a\u202b\u202c\u202d\u202e"
             "\u2066\u2067\u2068\u2069\ufeff\u061c"), None)
_LIST_SPLIT = re.compile(r"\s*(?:[,;，；、،؛\n]|\s+(?:and|et|y|и|和|و)\s+)\s*")
_COMMA_SPLIT = re.compile(r"\s*[,;，；、،؛\n]\s*")
_EMAIL_RE = re.compile(r"^[^@\s]{1,64}@[^@\s]+\.[^@\s.]{2,}$")
_CURRENCY_SYMBOLS = {"$": "USD", "us$": "USD", "€": "EUR", "£": "GBP", "¥": "CNY", "₽": "RUB",
                     "руб": "RUB", "元": "CNY", "人民币": "CNY", "美元": "USD", "欧元": "EUR"}
_CURRENCIES = frozenset(list_currencies())


class AnswerError(Exception):
    """An answer that cannot be accepted; carries the catalog key of the localized explanation."""

    def __init__(self, key: str, count: int | None = None,
                 choices: tuple[str, ...] = (), **values: Any) -> None:
        super().__init__(key)
        self.key = key
        self.count = count
        self.choices = choices  # country codes to offer instead of a plain refusal
        self.values = values


def normalize_digits(text: str) -> str:
    """Unicode decimal digits (Arabic-Indic, full-width…) become ASCII; Arabic separators too."""
    if text.isascii():
        return text
    out = []
    for ch in text:
        if ch.isdigit() and not ch.isascii():
            try:
                out.append(str(unicodedata.decimal(ch)))
                continue
            except ValueError:
                pass
        out.append({"٫": ".", "٬": ",", "，": ",", "．": "."}.get(ch, ch))
    return "".join(out)


# A host name label: letters and digits of any script (IDN), inner hyphens.
_HOST_LABEL = re.compile(r"[^\W_](?:[\w-]*[^\W_])?")


def as_index(text: str) -> int | None:
    """A typed list number ("3"), or None: str.isdigit() is true of "²", which int() refuses,
    and int() refuses thousands of digits too."""
    return int(text) if text.isdecimal() and len(text) <= 6 else None


def clean_text(text: str, *, multiline: bool = False) -> str:
    """Drop control, bidi and zero-width characters; NFC; keep newlines only for long text."""
    if text.isascii() and text.isprintable():
        return " ".join(text.split())
    text = unicodedata.normalize("NFC", text.translate(_BIDI_AND_INVISIBLE))
    kept = []
    for ch in text:
        if ch in "\r":
            continue
        if ch in "\n\t":
            kept.append(ch if multiline and ch == "\n" else " ")
        elif unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co"):
            continue
        else:
            kept.append(ch)
    text = "".join(kept)
    if multiline:
        lines = [" ".join(line.split()) for line in text.split("\n")]
        return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()
    return " ".join(text.split())


class AnswerParser:
    """Turns cleaned text into a stored value for one question, or raises AnswerError."""

    def __init__(self, translations: Translations) -> None:
        self.tr = translations
        self._label_cache: dict[tuple, dict[str, str]] = {}

    def parse(self, qn: Questionnaire, question: Question, text: str, lang: str,
              options: tuple[Option, ...], value_of: Callable[[str], Any]) -> Any:
        kind = question.type
        multiline = kind == "long_text"
        if len(text) > question.max_length * 4 + 100:  # don't spend work on megabytes
            raise AnswerError("error_too_long", count=question.max_length)
        text = clean_text(text, multiline=multiline)
        if not text:
            raise AnswerError("error_empty")
        if kind in ("text", "long_text", "email", "url") and len(text) > question.max_length:
            raise AnswerError("error_too_long", count=question.max_length)
        method = getattr(self, f"_parse_{kind}")
        return method(qn=qn, question=question, text=text, lang=lang, options=options,
                      value_of=value_of)

    # -- free text ----------------------------------------------------------------------------

    def _parse_text(self, text: str, **_: Any) -> str:
        return text

    def _parse_long_text(self, question: Question, text: str, lang: str, **_: Any) -> str:
        if question.max_words:
            limit = length_limit(question.max_words, lang)
            if text_length(text, lang) > limit:
                raise AnswerError("error_too_many_words", count=limit)
        return text

    def _parse_email(self, text: str, **_: Any) -> str:
        candidate = text.strip("<>").strip()
        if candidate.lower().startswith("mailto:"):
            candidate = candidate[7:]
        if not _EMAIL_RE.match(candidate):
            raise AnswerError("error_email")
        local, domain = candidate.rsplit("@", 1)
        try:
            domain = domain.encode("idna").decode("ascii").lower()
        except UnicodeError:
            raise AnswerError("error_email") from None
        return f"{local}@{domain}"

    def _parse_url(self, text: str, **_: Any) -> str:
        candidate = text.strip("<>").strip()
        if " " in candidate:
            raise AnswerError("error_url")
        if not re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", candidate):
            candidate = "https://" + candidate
        try:
            parts = urlsplit(candidate)
            host = parts.hostname or ""
        except ValueError:  # "http://[x": urlsplit refuses a broken IPv6 literal
            raise AnswerError("error_url") from None
        labels = host.removesuffix(".").split(".")
        if parts.scheme.lower() not in ("http", "https") or len(labels) < 2 \
                or not all(_HOST_LABEL.fullmatch(label) for label in labels):
            raise AnswerError("error_url")
        return candidate

    # -- numbers ------------------------------------------------------------------------------

    def _parse_integer(self, question: Question, text: str, **_: Any) -> int:
        numbers = re.findall(r"-?\d[\d\s,.'’]*", normalize_digits(text))
        if len(numbers) != 1:
            raise AnswerError("error_integer")
        raw = re.sub(r"[\s'’]", "", numbers[0]).rstrip(",.")
        if re.fullmatch(r"-?\d{1,3}([,.]\d{3})+", raw):
            raw = raw.replace(",", "").replace(".", "")
        if not re.fullmatch(r"-?\d{1,30}", raw):  # int() refuses thousands of digits
            raise AnswerError("error_integer")
        value = int(raw)
        self._check_range(question, Decimal(value))
        return value

    def _parse_decimal(self, question: Question, text: str, **_: Any) -> str:
        value = parse_decimal(normalize_digits(text))
        if value is None:
            raise AnswerError("error_decimal")
        self._check_range(question, value)
        return str(value)

    def _parse_money(self, qn: Questionnaire, question: Question, text: str,
                     **_: Any) -> dict[str, str]:
        text = normalize_digits(text)
        currency = None
        for symbol, code in _CURRENCY_SYMBOLS.items():
            if symbol in text.lower():
                currency = code
                text = re.sub(re.escape(symbol), " ", text, flags=re.IGNORECASE)
                break
        letters = re.findall(r"[A-Za-z]{3,}", text)
        for word in letters:
            if word.upper() in _CURRENCIES:
                currency = word.upper()
                text = text.replace(word, " ")
                break
        else:
            if letters and currency is None:
                raise AnswerError("error_currency", currency=letters[0])
        value = parse_decimal(text.strip())
        if value is None:
            raise AnswerError("error_money")
        self._check_range(question, value)
        currency = currency or str(qn.config.get("default_currency", "USD"))
        return {"amount": str(value), "currency": currency}

    def _check_range(self, question: Question, value: Decimal) -> None:
        low, high = question.min, question.max
        if (low is not None and value < Decimal(str(low))) or (
                high is not None and value > Decimal(str(high))):
            if high is None:
                raise AnswerError("error_number_min", min=_num(low))
            raise AnswerError("error_number_range", min=_num(low if low is not None else 0),
                              max=_num(high))

    # -- dates --------------------------------------------------------------------------------

    def _parse_year_month(self, question: Question, text: str, lang: str,
                          value_of: Callable[[str], Any], **_: Any) -> str:
        year, month = parse_year_month(normalize_digits(text), lang)
        if year is None:
            raise AnswerError("error_year_month")
        value = f"{year:04d}-{month:02d}"
        self._check_not_before(question, value, value_of)
        return value

    def _parse_date(self, question: Question, text: str, lang: str,
                    value_of: Callable[[str], Any], **_: Any) -> str:
        value = parse_date(normalize_digits(text), lang)
        if value is None:
            raise AnswerError("error_date")
        self._check_not_before(question, value, value_of)
        return value

    def _check_not_before(self, question: Question, value: str,
                          value_of: Callable[[str], Any]) -> None:
        other = value_of(question.not_before) if question.not_before else None
        if isinstance(other, str) and value < other[: len(value)]:
            raise AnswerError("error_not_before", value=other)

    # -- choices ------------------------------------------------------------------------------

    def parse_address(self, text: str) -> str:
        """An e-mail address typed in chat (outside a question), normalized."""
        return self._parse_email(text=clean_text(text))

    def _parse_yes_no(self, text: str, lang: str, options: tuple[Option, ...],
                      **kw: Any) -> str:
        word = fold(text).strip(".!¡¿?。！")
        if word in _YES_WORDS:
            return "YES"
        if word in _NO_WORDS:
            return "NO"
        try:
            codes = self._match_options(text=text, lang=lang, options=options, **kw)
        except AnswerError:
            raise AnswerError("error_yes_no") from None
        if len(codes) != 1:
            raise AnswerError("error_yes_no")
        return codes[0]

    def _parse_single_choice(self, text: str, **kw: Any) -> str:
        codes = self._match_options(text=text, **kw)
        if len(codes) != 1:
            raise AnswerError("error_single_only")
        return codes[0]

    def _parse_multi_choice(self, question: Question, text: str, **kw: Any) -> list[str]:
        codes = self._match_options(question=question, text=text, **kw)
        if question.max_select and len(codes) > question.max_select:
            raise AnswerError("error_max_select", count=question.max_select)
        return codes

    def match_options(self, qn: Questionnaire, question: Question, text: str, lang: str,
                      options: tuple[Option, ...]) -> list[str]:
        return self._match_options(qn=qn, question=question, text=clean_text(text), lang=lang,
                                   options=options)

    def _match_options(self, qn: Questionnaire, question: Question, text: str, lang: str,
                       options: tuple[Option, ...], **_: Any) -> list[str]:
        """Options by number, code or label (case/accent-insensitive); several with commas."""
        whole = self._match_one(qn, question, text, lang, options)
        if whole is not None:
            return [whole]
        parts = [p for p in _LIST_SPLIT.split(normalize_digits(text)) if p.strip()]
        if not parts:  # only separators (","): no option at all, not an empty selection
            raise AnswerError("error_choice", text=text.strip()[:60] or "…",
                              count=len(options))
        if len(parts) == 1:
            parts = [p for p in re.split(r"\s+", parts[0]) if p]
            if not all(p.isdecimal() for p in parts):
                parts = [text]
        codes: list[str] = []
        for part in parts:
            code = self._match_one(qn, question, part, lang, options)
            if code is None:
                raise AnswerError("error_choice", text=part[:60], count=len(options))
            if code not in codes:
                codes.append(code)
        return codes

    def _match_one(self, qn: Questionnaire, question: Question, text: str, lang: str,
                   options: tuple[Option, ...]) -> str | None:
        token = normalize_digits(text).strip().rstrip(".)").strip()
        index = as_index(token)
        if index is not None:
            return options[index - 1].code if 1 <= index <= len(options) else None
        if token.isdigit():  # a superscript or a huge number: no option's number
            return None
        codes = {o.code for o in options}
        if token.upper() in codes:
            return token.upper()
        folded = fold(token)
        labels = self._folded_labels(qn, question, lang, options)
        if folded in labels:
            return labels[folded]
        if len(folded) >= 4:
            hits = {code for label, code in labels.items() if folded in label}
            if len(hits) == 1:
                return hits.pop()
            if len(hits) > 1:
                names = ", ".join(self.tr.option_label(lang, qn, question, c)
                                  for c in sorted(hits))
                raise AnswerError("error_choice_ambiguous", text=token[:60], options=names)
        return None

    def _folded_labels(self, qn: Questionnaire, question: Question, lang: str,
                       options: tuple[Option, ...]) -> dict[str, str]:
        key = (qn.id, question.id, lang, tuple(o.code for o in options))
        labels = self._label_cache.get(key)
        if labels is None:
            labels = self._label_cache[key] = {
                fold(self.tr.option_label(lang, qn, question, o.code)): o.code for o in options}
        return labels

    # -- countries ----------------------------------------------------------------------------

    def _parse_country(self, text: str, lang: str, **_: Any) -> str:
        return self._one_country(text, lang)

    def _parse_multi_country(self, text: str, lang: str, **_: Any) -> list[str]:
        table = country_table()
        # Near matches only for the single names: "KE, UG" is two exact ones.
        whole = table.lookup(text, lang, fuzzy=len(_COMMA_SPLIT.split(text)) == 1)
        if whole.code:
            return [whole.code]
        codes: list[str] = []
        for part in _COMMA_SPLIT.split(text):
            # "Trinidad and Tobago" is one country; "Kenya and Uganda" two.
            pieces = [part] if table.lookup(part, lang, fuzzy=False).code else \
                _LIST_SPLIT.split(part)
            for piece in pieces:
                if piece.strip():
                    code = self._one_country(piece, lang)
                    if code not in codes:
                        codes.append(code)
        if not codes:
            raise AnswerError("error_empty")
        return codes

    def _one_country(self, text: str, lang: str) -> str:
        found = country_table().lookup(text, lang)
        if found.code:
            return found.code
        if found.candidates:
            names = self.tr.t(lang, "mail_list_sep").join(
                self.tr.country_name(lang, c) for c in found.candidates)
            raise AnswerError("error_country_choices", choices=found.candidates,
                              text=text[:60], options=names)
        raise AnswerError("error_country", text=text[:60])

    def find_country(self, text: str, lang: str) -> str | None:
        return country_table().lookup(text, lang).code


_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")


CHARACTERS_PER_WORD = 2  # a Chinese word is about two characters: 150 words ≈ 300 字
CHARACTER_COUNTED = frozenset({"zh"})  # limits are stated, and counted, in characters


def count_words(text: str) -> int:
    """Words; Chinese/Japanese text, written without spaces, counts two characters a word."""
    cjk = len(_CJK.findall(text))
    return -(-cjk // CHARACTERS_PER_WORD) + len(_CJK.sub(" ", text).split())


def text_length(text: str, lang: str) -> int:
    """Length in the unit the limit is stated in: 字 for Chinese, words otherwise."""
    if lang in CHARACTER_COUNTED:
        cjk = len(_CJK.findall(text))
        return cjk + CHARACTERS_PER_WORD * len(_CJK.sub(" ", text).split())
    return count_words(text)


def length_limit(max_words: int, lang: str) -> int:
    """The questionnaire's word limit in the unit of `lang` (150 words -> 300 字)."""
    return max_words * CHARACTERS_PER_WORD if lang in CHARACTER_COUNTED else max_words


def _num(value: float | None) -> str:
    if value is None:
        return ""
    return str(int(value)) if float(value).is_integer() else str(value)


def parse_decimal(text: str) -> Decimal | None:
    """'1 234,56', '1,234.56', '1.234,56', '15000' -> Decimal; None when not a number."""
    raw = re.sub(r"[\s\u00a0\u202f'’_]", "", text)
    if not re.fullmatch(r"-?\d[\d.,]*", raw):
        return None
    if "," in raw and "." in raw:
        decimal_sep = "," if raw.rfind(",") > raw.rfind(".") else "."
        whole = raw[: raw.rfind(decimal_sep)].split("." if decimal_sep == "," else ",")
        if decimal_sep in raw[: raw.rfind(decimal_sep)] or not (
                all(len(g) == 3 for g in whole[1:]) and 1 <= len(whole[0].lstrip("-")) <= 3):
            return None
        raw = raw.replace("." if decimal_sep == "," else ",", "").replace(",", ".")
    elif "," in raw or "." in raw:
        sep = "," if "," in raw else "."
        groups = raw.split(sep)
        grouped = all(len(g) == 3 for g in groups[1:]) and 1 <= len(groups[0].lstrip("-")) <= 3
        if len(groups) > 2:
            if not grouped:
                return None
            raw = raw.replace(sep, "")  # thousands separators
        elif grouped and sep == ",":
            raw = raw.replace(sep, "")
        else:
            raw = raw.replace(",", ".")
    try:
        value = Decimal(raw)
    except InvalidOperation:
        return None
    return value if value.is_finite() else None


@lru_cache(maxsize=16)
def _month_names(lang: str) -> dict[str, int]:
    names: dict[str, int] = {}
    for code in dict.fromkeys(("en", lang)):
        months = Locale.parse(code).months
        for context in ("format", "stand-alone"):
            for width in ("wide", "abbreviated"):
                for number, name in months[context][width].items():
                    names[fold(name).strip(".")] = number
    return names


def _year_ok(year: int) -> bool:
    return YEAR_MIN <= year <= YEAR_MAX


def parse_year_month(text: str, lang: str) -> tuple[int | None, int]:
    text = text.strip()
    m = re.fullmatch(r"(\d{4})\s*[-/.年]\s*(\d{1,2})\s*月?", text)
    if not m:
        m2 = re.fullmatch(r"(\d{1,2})\s*[-/.]\s*(\d{4})", text)
        m = m2 and (m2.group(2), m2.group(1))
    else:
        m = (m.group(1), m.group(2))
    if not m:
        words = re.findall(r"[^\W\d_]+\.?", text)
        years = re.findall(r"\d{4}", text)
        if len(years) == 1 and len(words) >= 1:
            months = _month_names(lang)
            for word in words:
                number = months.get(fold(word).strip("."))
                if number:
                    m = (years[0], str(number))
                    break
    if not m:
        return None, 0
    year, month = int(m[0]), int(m[1])
    if not (_year_ok(year) and 1 <= month <= 12):
        return None, 0
    return year, month


def parse_date(text: str, lang: str) -> str | None:
    import datetime as dt

    text = text.strip()
    m = re.fullmatch(r"(\d{4})\s*[-/.年]\s*(\d{1,2})\s*[-/.月]\s*(\d{1,2})\s*日?", text)
    if m:
        year, month, day = int(m[1]), int(m[2]), int(m[3])
    else:
        m = re.fullmatch(r"(\d{1,2})\s*[-/.]\s*(\d{1,2})\s*[-/.]\s*(\d{4})", text)
        if m:
            first, second, year = int(m[1]), int(m[2]), int(m[3])
            # Day first, as the UN and most respondents write dates; month first only
            # when the first number cannot be a month.
            day, month = (first, second) if second <= 12 else (second, first)
        else:
            words = re.findall(r"[^\W\d_]+\.?", text)
            nums = re.findall(r"\d+", text)
            month = next((n for w in words if (n := _month_names(lang).get(fold(w).strip(".")))),
                         None)
            years = [int(n) for n in nums if len(n) == 4]
            days = [int(n) for n in nums if len(n) <= 2]
            if not (month and len(years) == 1 and len(days) == 1):
                return None
            year, day = years[0], days[0]
    if not _year_ok(year):
        return None
    try:
        return dt.date(year, month, day).isoformat()
    except ValueError:
        return None


_YES_WORDS = frozenset(fold(w) for w in (
    "yes", "y", "yeah", "oui", "si", "sí", "da", "да", "是", "是的", "对", "نعم", "ok"))
_NO_WORDS = frozenset(fold(w) for w in ("no", "n", "non", "нет", "否", "不", "不是", "لا"))


def yes_no_word(text: str) -> str | None:
    """"YES" / "NO" for a typed yes or no in any of the six languages, else None."""
    word = fold(clean_text(text)).strip(".!¡¿?。！")
    return "YES" if word in _YES_WORDS else "NO" if word in _NO_WORDS else None
