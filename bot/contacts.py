"""A contacts file for `capbot invite`: its bytes decoded (BOM, then UTF-8, then cp1252), its
delimiter sniffed (, ; or tab), each row checked (pure apart from reading the file)."""

from __future__ import annotations

import codecs
import contextlib
import csv
import email.utils
import re
from dataclasses import dataclass
from pathlib import Path

from bot.countries import country_table

LANGUAGES = ("ar", "en", "es", "fr", "ru", "zh")
REQUIRED = ("email", "name", "organization", "country", "language")  # org_type optional
_ALIASES = {"e-mail": "email", "e_mail": "email", "email_address": "email",
            "organisation": "organization", "organization_type": "org_type",
            "organisation_type": "org_type"}
_ADDRESS = re.compile(r"^[^@\s<>()\[\],;:\"]+@[^@\s<>()\[\],;:\"]+\.[^@\s<>()\[\],;:\"]+$")


class ContactsError(ValueError):
    """The whole file is refused: `line` and `problem` make the one-line message."""

    def __init__(self, line: int, problem: str) -> None:
        super().__init__(f"line {line}: {problem}")
        self.line, self.problem = line, problem


@dataclass(frozen=True, slots=True)
class Contact:
    line: int
    email: str
    name: str
    organization: str
    country: str | None  # ISO alpha-3 (or "eu"); None when the column is empty
    language: str
    org_type: str | None


@dataclass(frozen=True, slots=True)
class BadRow:
    line: int
    reason: str


def decode(raw: bytes) -> str:
    """The file's text: a byte-order mark decides, else UTF-16 without one (every other byte
    zero), else UTF-8, else Windows-1252; bytes that are none of these refuse the file."""
    if raw.startswith((b"PK\x03\x04", b"\xd0\xcf\x11\xe0")):
        raise ContactsError(1, "this is an Excel workbook, not CSV: save it with Excel's "
                               "\"CSV UTF-8\" or \"Unicode Text\"")
    for bom, encoding in ((codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"),
                          (codecs.BOM_UTF16_BE, "utf-16")):
        if raw.startswith(bom):
            return _strict(raw, encoding)
    head = raw[:4000]
    if len(head) >= 2 and head.count(0) * 3 > len(head):  # UTF-16 without a byte-order mark
        return _strict(raw, "utf-16-be" if head[0::2].count(0) > head[1::2].count(0)
                       else "utf-16-le")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return _strict(raw, "cp1252")


def _strict(raw: bytes, encoding: str) -> str:
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        shown = "UTF-8 or Windows-1252" if encoding == "cp1252" else encoding.upper()
        raise ContactsError(line, f"byte 0x{raw[exc.start]:02x} is not {shown} text: save "
                                  "the file as \"CSV UTF-8\"") from None


def normalize_address(text: str) -> str:
    """The same canonical form as the email channel's (handlers/email/parsing.py), which bot
    may not import: lower case, IDNA domain; "" when it is not an address."""
    text = (text or "").strip()
    if "<" in text:
        text = email.utils.parseaddr(text)[1]
    text = text.strip().strip("<>").strip()
    if text.lower().startswith("mailto:"):
        text = text[7:]
    if not _ADDRESS.match(text):
        return ""
    local, _, domain = text.rpartition("@")
    domain = domain.rstrip(".").lower()
    with contextlib.suppress(UnicodeError):
        domain = domain.encode("idna").decode("ascii")
    return f"{local.lower()}@{domain}"


def read_contacts(path: Path, *, org_types: set[str] | None = None
                  ) -> tuple[list[Contact], list[BadRow]]:
    text = decode(Path(path).read_bytes())
    if not text.strip(" \t\r\n\ufeff"):
        raise ContactsError(1, "the file is empty")
    lines = text.splitlines(keepends=True)
    skipped = next(i for i, line in enumerate(lines) if line.strip(" \t\r\n\ufeff"))
    first = lines[skipped]
    try:
        delimiter = csv.Sniffer().sniff(first, delimiters=",;\t").delimiter
    except csv.Error:
        delimiter = ","
    reader = csv.reader(lines[skipped:], delimiter=delimiter)
    header = [_column(h) for h in next(reader)]
    missing = [column for column in REQUIRED if column not in header]
    if missing:
        raise ContactsError(skipped + 1, f"no {', '.join(map(repr, missing))} column"
                            f"{'s' if len(missing) > 1 else ''} (columns: {', '.join(header)})")

    def numbered():  # (line where the record starts, its values)
        ended = reader.line_num
        for values in reader:
            yield skipped + ended + 1, values
            ended = reader.line_num

    good, bad = check_rows(header, numbered(), org_types=org_types)
    if not good and not bad:
        raise ContactsError(skipped + 2, "no contacts after the header line")
    return good, bad


def _column(name: str) -> str:
    key = "_".join(name.strip().strip("\ufeff").lower().split())
    return _ALIASES.get(key, key)


def check_rows(header: list[str], rows, *, org_types: set[str] | None = None
               ) -> tuple[list[Contact], list[BadRow]]:
    """rows: (line number, values) pairs."""
    good: list[Contact] = []
    bad: list[BadRow] = []
    seen: dict[str, int] = {}
    table = country_table()
    for index, values in rows:
        if not any(v.strip() for v in values):
            continue
        row = {k: (values[i].strip() if i < len(values) else "") for i, k in enumerate(header)}
        address = normalize_address(row.get("email", ""))
        if not address:
            bad.append(BadRow(index, f"invalid address {row.get('email', '')!r}"))
            continue
        if address in seen:
            bad.append(BadRow(index, f"duplicate address {address} (line {seen[address]})"))
            continue
        lang = (row.get("language") or "en").lower()
        if lang not in LANGUAGES:
            bad.append(BadRow(index, f"unknown language {row['language']!r} "
                                     f"(one of {' '.join(LANGUAGES)})"))
            continue
        country = None
        if row.get("country"):
            country = _country(table, row["country"], lang)
            if country is None:
                bad.append(BadRow(index, f"unknown country {row['country']!r}"))
                continue
        org_type = row.get("org_type") or None
        if org_type and org_types is not None and org_type not in org_types:
            bad.append(BadRow(index, f"unknown org_type {org_type!r}"))
            continue
        seen[address] = index
        good.append(Contact(index, address, row.get("name", ""), row.get("organization", ""),
                            country, lang, org_type))
    return good, bad


def _country(table, text: str, lang: str) -> str | None:
    for each in dict.fromkeys((lang, *LANGUAGES)):
        match = table.lookup(text, each, fuzzy=False)
        if match.code:
            return _alpha3(table, match.code)
    return None


def _alpha3(table, code: str) -> str:
    country = table.countries.get(code)
    return country.alpha3.lower() if country is not None and country.alpha3 else code
