"""CSV cells that spreadsheets take as data: formula neutralisation, numbers, timestamps."""

from __future__ import annotations

import re
from datetime import UTC
from typing import Any

# A cell starting with one of these is run as a formula by Excel, LibreOffice or Google Sheets
# (OWASP "CSV injection"); LF and the full-width forms that some spreadsheet locales fold to
# ASCII are added for safety.
FORMULA_TRIGGERS = frozenset("=+-@\t\r\n\uff1d\uff0b\uff0d\uff20")
RISKY_FIRST = FORMULA_TRIGGERS | {"'"}  # cells starting otherwise are left as they are
_PLAIN_NUMBER = re.compile(r"-?[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")


def neutralise(text: str) -> str:
    """Make a cell inert in spreadsheets: prefix `'` when it would start a formula.

    Cells that already start with quotes followed by a trigger get one more quote, so that
    `restore()` is an exact inverse and the rule never loses information.
    """
    if not text:
        return text
    first = text[0]
    if first in FORMULA_TRIGGERS:
        return "'" + text
    if first == "'" and text.lstrip("'")[:1] in FORMULA_TRIGGERS:
        return "'" + text
    return text


def restore(cell: str) -> str:
    """The inverse of `neutralise()`: the text as the respondent typed it."""
    if cell[:1] == "'" and cell.lstrip("'")[:1] in FORMULA_TRIGGERS:
        return cell[1:]
    return cell


def number_cell(text: str) -> str:
    """A cell of a column that the question type says is a number: plain numbers stay as they
    are (so `-5` remains a number for Excel and pandas), anything else is neutralised."""
    return text if _PLAIN_NUMBER.fullmatch(text) else neutralise(text)


def format_timestamp(value: Any) -> str:
    """UTC `YYYY-MM-DD HH:MM:SS` (Excel and pandas read it as a date-time); '' for null."""
    if value is None:
        return ""
    if isinstance(value, str):  # already text (formatted by the database)
        return value[:19].replace("T", " ")
    if value.tzinfo is not None:
        value = value.astimezone(UTC)
    return value.strftime("%Y-%m-%d %H:%M:%S")


def safe_row(cells: list[Any]) -> list[Any]:
    """Every text cell of a row neutralised; numbers and None as they are."""
    return [neutralise(c) if isinstance(c, str) else c for c in cells]
