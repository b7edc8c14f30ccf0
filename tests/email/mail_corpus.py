"""The reply-parsing corpus (tests/fixtures/mail_corpus): its cases, and the respondent's text
capbot reads from each, through the same functions the email channel uses."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml

from handlers.email.parsing import html_to_text, parse_message
from handlers.email.quotes import strip_reply

CORPUS = Path(__file__).resolve().parents[1] / "fixtures" / "mail_corpus"
EXPECTED = CORPUS / "expected.json"
_SKIP = {"SOURCES.md", "expected.json", "cases.yaml", "text_quotations.json"}


@dataclass(frozen=True)
class Case:
    id: str  # path in the corpus, "#name" for a case inside a file
    kind: str  # "eml" (raw message: parse_message), "html" (a body), "text" (a body)
    data: bytes


def cases() -> Iterator[Case]:
    for path in sorted(CORPUS.rglob("*")):
        rel = path.relative_to(CORPUS).as_posix()
        if not path.is_file() or path.name in _SKIP or rel.startswith("licences/"):
            continue
        kind = "eml" if path.suffix == ".eml" else "html" if path.suffix == ".html" else "text"
        yield Case(rel, kind, path.read_bytes())
    inline = json.loads((CORPUS / "talon" / "text_quotations.json").read_text("utf-8"))
    for name, case in inline["cases"].items():
        yield Case(f"talon/text_quotations.json#{name}", "text", case["text"].encode())
    for case in yaml.safe_load((CORPUS / "capbot" / "cases.yaml").read_text("utf-8")):
        yield Case(f"capbot/cases.yaml#{case['id']}", "text", case["text"].encode())


def respondent_text(case: Case) -> str:
    """What the channel reads as the respondent's own text."""
    if case.kind == "eml":
        return parse_message(case.data).reply_text
    body = case.data.decode("utf-8").replace("\r\n", "\n")
    return strip_reply(html_to_text(body) if case.kind == "html" else body)


def expected() -> dict[str, str]:
    table = json.loads(EXPECTED.read_text("utf-8"))["cases"]
    return {case_id: row["expected"] for case_id, row in table.items()}
