"""Progress of a reporting round: counts, completion funnel and most-reported areas.

Which question holds the country, the organization type and the areas comes from the
questionnaire's roles; a questionnaire without such a role gets no such breakdown.
"""

from __future__ import annotations

import logging
import unicodedata
from collections import Counter
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from bot.i18n import LANGUAGES, Translations
from bot.questionnaire import Question, Questionnaire
from reports.round_stats import collect_rounds, format_rounds
from storage import reads
from storage.reads import DatabaseLike, reading_connection

logger = logging.getLogger(__name__)

STATUS_ORDER = ("submitted", "draft", "cancelled")
NONE = "(none)"
_STOP_ROWS = 10


async def collect_stats(db: DatabaseLike | AsyncConnection, questionnaire: Questionnaire,
                        translations: Translations) -> dict[str, Any]:
    """Everything `capbot stats` and /stats show, as a JSON-ready dict (labels included in the
    six languages, so that `format_stats` needs no catalogs). Aggregates run in SQL; the funnel
    streams the respondents' conversation states."""
    if isinstance(db, AsyncConnection):
        return await _collect(db, questionnaire, translations)
    async with reading_connection(db) as conn:
        return await _collect(conn, questionnaire, translations)


async def _collect(conn: AsyncConnection, qn: Questionnaire,
                   tr: Translations) -> dict[str, Any]:
    labels = _Labels(qn, tr)
    statuses = await reads.reports_by(conn, qn.id, "status")
    by_status = Counter({status: n for _v, status, n in statuses})
    stats: dict[str, Any] = {
        "questionnaire": qn.id,
        "generated_at": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "totals": {
            "respondents": 0,  # set from the funnel: respondents of this questionnaire
            "reports": sum(by_status.values()),
            **{status: by_status.get(status, 0) for status in STATUS_ORDER},
            "amended": await reads.amended_reports(conn, qn.id),
            "amendments_in_progress": await reads.amendments_in_progress(conn, qn.id),
        },
        "by_status": _table(statuses, lambda code: {}),
        "by_language": _table(await reads.reports_by(conn, qn.id, "language"),
                              labels.language),
        "by_channel": _table(await reads.reports_by(conn, qn.id, "channel"), lambda code: {}),
    }
    for key, role, label_of in (("by_country", "country", lambda q: labels.country),
                                ("by_org_type", "org_type", labels.option_of)):
        q = qn.by_role(role)
        if q is not None:
            stats[key] = _table(await reads.reports_by_answer(conn, qn.id, q.id), label_of(q))
    stats["funnel"], stats["drafts_stop"] = await _funnel(conn, qn, labels)
    stats["totals"]["respondents"] = stats["funnel"][0]["respondents"]
    activity_areas, need_areas = qn.by_role("activity_areas"), qn.by_role("need_areas")
    if activity_areas is not None:
        stats["activity_areas"] = await _areas(conn, qn, labels, activity_areas,
                                               per_activity=True)
    if need_areas is not None:
        stats["need_areas"] = await _areas(conn, qn, labels, need_areas, per_activity=False,
                                           top=qn.by_role("top_needs"))
    stats["cross_channel"] = {
        "opted_out": await reads.opted_out_count(conn),
        "links_refused": [
            {"at": str(at)[:19], "invitation": data.get("invitation"), "email": email or "",
             "chat": data.get("chat_id", "")}
            for at, data, email in await reads.refused_links(conn)]}
    stats["rounds"] = await collect_rounds(conn, qn, tr)
    stats["undelivered"] = [
        {"channel": channel, "status": status, "reason": error or "", "messages": n}
        for channel, status, error, n in await reads.undelivered(conn)]
    return stats


def _table(rows: Iterable[tuple[Any, str, int]], label_of) -> list[dict[str, Any]]:
    """(value, status, count) rows -> one entry per value with a count per status, biggest
    first."""
    merged: dict[str, Counter] = {}
    for value, status, n in rows:
        key = NONE if value in (None, "") else str(value)
        merged.setdefault(key, Counter())[status] += n
    out = []
    for key, counts in merged.items():
        entry = {"code": key, "labels": label_of(key) if key != NONE else {}}
        entry.update({status: counts.get(status, 0) for status in STATUS_ORDER})
        entry["total"] = sum(counts.values())
        out.append(entry)
    out.sort(key=lambda e: (e["code"] == NONE, -e["total"], e["code"]))
    return out


class _Labels:
    """Labels in the six languages for codes shown by the statistics."""

    def __init__(self, qn: Questionnaire, tr: Translations) -> None:
        self.qn, self.tr = qn, tr
        self.langs = [lang for lang in LANGUAGES if lang in tr.languages]

    def _each(self, fn) -> dict[str, str]:
        out = {}
        for lang in self.langs:
            try:
                out[lang] = fn(lang)
            except KeyError:
                continue
        return out

    def language(self, code: str) -> dict[str, str]:
        if code not in self.tr.languages:
            return {}
        return self._each(lambda _lang: self.tr.language_name(code))  # the autonym

    def country(self, code: str) -> dict[str, str]:
        return self._each(lambda lang: self.tr.country_name(lang, code))

    def option_of(self, q: Question):
        def label(code: str) -> dict[str, str]:
            return self._each(lambda lang: self.tr.option_label(lang, self.qn, q, code))
        return label

    def section(self, sid: str) -> dict[str, str]:
        return self._each(lambda lang: self.tr.section_title(lang, self.qn, sid))

    def question(self, q: Question) -> dict[str, str]:
        if q.other_of:
            return {}
        return self._each(lambda lang: self.tr.question_prompt(lang, self.qn, q))


async def _funnel(conn: AsyncConnection, qn: Questionnaire,
                  labels: _Labels) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """How far each respondent got (from the conversation state: phase, slot, answers), and
    where those who have not submitted stopped."""
    section_index = {sec.id: i for i, sec in enumerate(qn.sections)}
    n_sections = len(qn.sections)
    reached = Counter()  # furthest step index -> respondents
    stop_phase: Counter = Counter()
    stop_question: Counter = Counter()
    total = 0
    async for partition in reads.conversation_states(conn):
        for state in partition:
            if not isinstance(state, dict) or state.get("questionnaire") != qn.id:
                continue
            total += 1
            phase = state.get("phase")
            version = state.get("version") or 1
            furthest = -1  # -1: not started; 0..n-1 sections; n review; n+1 submitted
            for key in state.get("answers") or {}:
                q = qn.questions.get(key.partition("@")[0])
                if q is not None:
                    furthest = max(furthest, section_index[q.section])
            slot_q = qn.questions.get((state.get("slot") or "").partition("@")[0])
            if slot_q is not None and phase in ("asking", "cancelled", "language"):
                furthest = max(furthest, section_index[slot_q.section])
            if phase == "done" or version > 1:
                furthest = n_sections + 1
            elif phase == "review" or (phase == "cancelled" and state.get("resume") == "review"):
                furthest = n_sections
            reached[furthest] += 1
            if furthest <= n_sections:  # not submitted: where did they stop?
                stop_phase[phase or "new"] += 1
                if slot_q is not None and phase in ("asking", "cancelled"):
                    stop_question[slot_q.id] += 1

    def at_least(index: int) -> int:
        return sum(n for i, n in reached.items() if i >= index)

    funnel = [{"step": "contacted", "labels": {}, "respondents": total},
              {"step": "started", "labels": {}, "respondents": at_least(0)}]
    for i, sec in enumerate(qn.sections):
        funnel.append({"step": f"section:{sec.id}", "labels": labels.section(sec.id),
                       "respondents": at_least(i)})
    funnel.append({"step": "review", "labels": {}, "respondents": at_least(n_sections)})
    funnel.append({"step": "submitted", "labels": {},
                   "respondents": at_least(n_sections + 1)})
    stops = {
        "by_phase": dict(stop_phase.most_common()),
        "by_question": [
            {"question": qid, "section": qn.questions[qid].section,
             "labels": labels.question(qn.questions[qid]), "respondents": n}
            for qid, n in sorted(stop_question.items(),
                                 key=lambda kv: (-kv[1], list(qn.questions).index(kv[0])))
        ][:_STOP_ROWS],
    }
    return funnel, stops


async def _areas(conn: AsyncConnection, qn: Questionnaire, labels: _Labels, q: Question, *,
                 per_activity: bool, top: Question | None = None) -> list[dict[str, Any]]:
    """Codes of a multi-choice question over submitted reports: how many reports (and
    activities, for a repeated question; and top-3 picks, for needs) name each code."""
    qid = q.id
    wanted = [qid] + ([top.id] if top is not None else [])
    mentions: Counter = Counter()
    reports: Counter = Counter()
    tops: Counter = Counter()
    seen: set[str] = set()  # codes already counted for the current report
    last_sid = None
    async for partition in reads.submitted_answer_codes(conn, qn.id, wanted):
        for sid, question, code in partition:
            if sid != last_sid:
                seen.clear()
                last_sid = sid
            codes = [c for c in code.split(";") if c]
            if question != qid:
                tops.update(codes)
                continue
            mentions.update(codes)
            fresh = set(codes) - seen
            seen |= fresh
            reports.update(fresh)
    label_of = labels.option_of(q)
    order = {o.code: i for i, o in enumerate(q.options)}
    out = []
    for option in q.options:
        code = option.code
        if not (mentions[code] or tops[code]):
            continue
        entry: dict[str, Any] = {"code": code, "labels": label_of(code),
                                 "bch_ref": option.bch_ref, "reports": reports[code]}
        if per_activity:
            entry["activities"] = mentions[code]
        if top is not None:
            entry["top3"] = tops[code]
        out.append(entry)
    out.sort(key=lambda e: (-e.get("activities", e["reports"]), -e["reports"],
                            order[e["code"]]))
    return out


# -- text ---------------------------------------------------------------------------------------


def _label(entry: dict[str, Any], lang: str) -> str:
    found = entry.get("labels") or {}
    return found.get(lang) or found.get("en") or ""


def _render(title: str, header: list[str], rows: list[list[Any]],
            numeric_from: int) -> list[str]:
    """An aligned plain-text table; numbers right-aligned."""
    lines = ["", title]
    if not rows:
        return [*lines, "  (nothing yet)"]
    cells = [[str(c) for c in row] for row in [header, *rows]]
    widths = [max(_width(r[i]) for r in cells) for i in range(len(header))]
    for n, row in enumerate(cells):
        parts = []
        for i, cell in enumerate(row):
            pad = " " * (widths[i] - _width(cell))
            parts.append(pad + cell if i >= numeric_from else cell + pad)
        lines.append("  " + "  ".join(parts).rstrip())
        if n == 0:
            lines.append("  " + "  ".join("-" * w for w in widths))
    return lines


def _width(text: str) -> int:
    """Display width: East Asian wide characters take two columns in a terminal."""
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else
               0 if unicodedata.combining(ch) else 1 for ch in text)


def _cut(text: str, limit: int = 48) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def format_stats(stats: dict[str, Any], lang: str = "en") -> str:
    """The statistics as aligned plain-text tables; labels in `lang` (headings in English)."""
    t = stats["totals"]
    lines = [f"Reporting round: {stats['questionnaire']} — {stats['generated_at']}",
             f"  respondents {t['respondents']} · reports {t['reports']} · submitted "
             f"{t['submitted']} · draft {t['draft']} · cancelled {t['cancelled']} · amended "
             f"{t['amended']} (in progress {t['amendments_in_progress']})"]
    status_cols = ["submitted", "draft", "cancelled", "total"]

    def breakdown(title: str, key: str, with_label: bool = True) -> None:
        if key not in stats:  # the questionnaire has no question with that role
            return
        rows = [[e["code"], *([_cut(_label(e, lang))] if with_label else []),
                 *(e[c] for c in status_cols)] for e in stats[key]]
        header = ["code", *(["name"] if with_label else []), *status_cols]
        lines.extend(_render(title, header, rows, 2 if with_label else 1))

    breakdown("Reports by status", "by_status", with_label=False)
    breakdown("Reports by language", "by_language")
    breakdown("Reports by channel", "by_channel", with_label=False)
    breakdown("Reports by country", "by_country")
    breakdown("Reports by organization type", "by_org_type")
    funnel = stats["funnel"]
    start = funnel[0]["respondents"] or 1
    lines.extend(_render("Completion funnel (respondents who got at least this far)",
                         ["step", "name", "respondents", "%"],
                         [[f["step"], _cut(_label(f, lang)), f["respondents"],
                           f"{100 * f['respondents'] / start:.0f}"] for f in funnel], 2))
    stops = stats["drafts_stop"]
    lines.extend(_render("Not submitted yet: where they are",
                         ["phase", "respondents"],
                         [[p, n] for p, n in stops["by_phase"].items()], 1))
    lines.extend(_render("Not submitted yet: question they stopped at",
                         ["question", "section", "prompt", "respondents"],
                         [[e["question"], e["section"], _cut(_label(e, lang), 40),
                           e["respondents"]] for e in stops["by_question"]], 3))
    if "activity_areas" in stats:
        lines.extend(_render("Most-reported areas of activity (submitted reports)",
                             ["code", "name", "activities", "reports"],
                             [[e["code"], _cut(_label(e, lang)), e["activities"], e["reports"]]
                              for e in stats["activity_areas"]], 2))
    if "need_areas" in stats:
        lines.extend(_render("Most-reported areas of need (submitted reports)",
                             ["code", "name", "reports", "top-3"],
                             [[e["code"], _cut(_label(e, lang)), e["reports"],
                               e.get("top3", 0)] for e in stats["need_areas"]], 2))
    lines.extend(format_rounds(stats.get("rounds", []), lang, _render, _label, _cut))
    cross = stats["cross_channel"]
    lines.extend(_render(f"Invitation links refused (bound to another Telegram account) · "
                         f"opted out: {cross['opted_out']}",
                         ["when", "invitation", "invited", "chat"],
                         [[e["at"], e["invitation"], e["email"], e["chat"]]
                          for e in cross["links_refused"]], 3))
    lines.extend(_render("Messages not delivered (failed ones: capbot outbox retry)",
                         ["channel", "status", "reason", "messages"],
                         [[e["channel"], e["status"], _cut(e["reason"], 60), e["messages"]]
                          for e in stats["undelivered"]], 3))
    return "\n".join(lines) + "\n"
