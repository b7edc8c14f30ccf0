"""A contacts file for `capbot invite`: its bytes decoded (BOM, then UTF-8, then cp1252), its
delimiter sniffed (, ; or tab), each row checked (pure apart from reading the file)."""

from __future__ import annotations

import codecs
import contextlib
import csv
import email.utils
import io
import re
from dataclasses import dataclass
from pathlib import Path

from bot.countries import country_table

LANGUAGES = ("ar", "en", "es", "fr", "ru", "zh")
REQUIRED = ("email",)
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
    for bom, encoding in ((codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"),
                          (codecs.BOM_UTF16_BE, "utf-16")):
        if raw.startswith(bom):
            return raw.decode(encoding)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("cp1252", errors="replace")


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
    if not text.strip():
        raise ContactsError(1, "the file is empty")
    first = text.lstrip().splitlines()[0]
    try:
        delimiter = csv.Sniffer().sniff(first, delimiters=",;\t").delimiter
    except csv.Error:
        delimiter = ","
    reader = csv.reader(io.StringIO(text), delimiter=delimiter)
    header = [h.strip().lower() for h in next(reader)]
    for column in REQUIRED:
        if column not in header:
            raise ContactsError(1, f"no {column!r} column (columns: {', '.join(header)})")
    return check_rows(header, reader, org_types=org_types)


def check_rows(header: list[str], rows, *, org_types: set[str] | None = None
               ) -> tuple[list[Contact], list[BadRow]]:
    good: list[Contact] = []
    bad: list[BadRow] = []
    seen: dict[str, int] = {}
    table = country_table()
    for index, values in enumerate(rows, start=2):
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
