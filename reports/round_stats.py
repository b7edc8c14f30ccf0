"""The reporting rounds in `capbot stats`: invited, opened (started), in progress, submitted,
opted out, undeliverable, reminders sent — in total, by country (UN short names) and by
organization type."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from bot.countries import country_table
from bot.i18n import LANGUAGES, Translations
from bot.questionnaire import Questionnaire
from storage import round_reads

COLUMNS = ("invited", "opened", "in_progress", "submitted", "opted_out", "undeliverable",
           "reminders")
NONE = "(none)"


async def collect_rounds(conn: AsyncConnection, qn: Questionnaire,
                         tr: Translations) -> list[dict[str, Any]]:
    """One entry per round of the questionnaire: totals, by_country, by_org_type."""
    rows = await round_reads.invitation_progress(conn, qn.id)
    by_round: dict[int, list[Any]] = defaultdict(list)
    deadlines = {}
    for row in rows:
        by_round[row.round].append(row)
        deadlines[row.round] = row.deadline
    org_question = qn.by_role("org_type")
    out = []
    for round_id, members in by_round.items():
        out.append({
            "round": round_id,
            "deadline": deadlines[round_id].isoformat() if deadlines[round_id] else None,
            "totals": _count(members),
            "by_country": _breakdown(members, lambda r: r.country,
                                     lambda code: _country_labels(code)),
            "by_org_type": _breakdown(members, lambda r: r.org_type,
                                      lambda code: _option_labels(tr, qn, org_question, code)),
        })
    return out


def _count(rows: list[Any]) -> dict[str, int]:
    counts = dict.fromkeys(COLUMNS, 0)
    for r in rows:
        counts["invited"] += 1
        counts["opened"] += bool(r.opened or r.submitted)
        counts["in_progress"] += bool(r.opened and not r.submitted)
        counts["submitted"] += bool(r.submitted)
        counts["opted_out"] += bool(r.opted_out)
        counts["undeliverable"] += r.status == "undeliverable"
        counts["reminders"] += r.reminders_sent or 0
    return counts


def _breakdown(rows: list[Any], key, labels) -> list[dict[str, Any]]:
    groups: dict[str, list[Any]] = defaultdict(list)
    for r in rows:
        groups[key(r) or NONE].append(r)
    return [{"code": code, "labels": labels(code) if code != NONE else {}, **_count(members)}
            for code, members in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0]))]


def _country_labels(code: str) -> dict[str, str]:
    table = country_table()
    alpha2 = code.lower() if len(code) == 2 else next(
        (c.code for c in table.countries.values() if (c.alpha3 or "").lower() == code.lower()),
        None)
    if alpha2 is None or alpha2 not in table:
        return {}
    return {lang: table.name(lang, alpha2) for lang in LANGUAGES}


def _option_labels(tr: Translations, qn: Questionnaire, question, code: str) -> dict[str, str]:
    if question is None or code not in {o.code for o in question.options}:
        return {}
    return {lang: tr.option_label(lang, qn, question, code) for lang in tr.languages}


def format_rounds(rounds: list[dict[str, Any]], lang: str, render, label, cut) -> list[str]:
    """The rounds as tables, with stats.py's table helpers (`render`, `label`, `cut`)."""
    lines: list[str] = []
    header = ["invited", "opened", "in prog.", "submitted", "opted out", "undeliv.",
              "reminders"]
    for r in rounds:
        t = r["totals"]
        title = f"Round {r['round']} (deadline {r['deadline'] or 'none'})"
        lines.extend(render(title, header, [[t[c] for c in COLUMNS]], 0))
        for key, name in (("by_country", "country"), ("by_org_type", "organization type")):
            rows = [[e["code"], cut(label(e, lang) or e["code"]), *(e[c] for c in COLUMNS)]
                    for e in r[key]]
            lines.extend(render(f"Round {r['round']} by {name}", ["code", "name", *header],
                                rows, 2))
    return lines
