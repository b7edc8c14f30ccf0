"""Progress statistics of a reporting round: counts, funnel, areas; text tables and JSON."""

from __future__ import annotations

import argparse
import io
import json
import unicodedata
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.app import App, build_app
from bot.config import load_settings
from handlers.console import ConsoleChannel
from reports.cli import run_stats
from reports.stats import collect_stats, format_stats
from tests.test_export import PROFILE, converse, label, three_reports


@pytest.fixture
async def any_app(database_url: str) -> AsyncIterator[App]:
    application = await build_app(load_settings(database_url=database_url))
    try:
        yield application
    finally:
        await application.close()


def by_code(entries: list[dict]) -> dict[str, dict]:
    return {e["code"]: e for e in entries}


async def round_in_progress(app: App) -> None:
    """Three submitted reports (fr, ar, zh), one draft stopped at R3_org (es), one paused
    (ru), and the French report being amended (a draft version 2)."""
    await three_reports(app)
    await converse(app, "es1", "es", PROFILE[:2], finish=False)
    await converse(app, "ru1", "ru", [*PROFILE, ("choice", "NO")], finish=False)
    ru = ConsoleChannel(app.service, "ru1", language="ru", json_mode=True, out=io.StringIO())
    await ru.send("text", "/cancel")
    fr = ConsoleChannel(app.service, "fr1", language="fr", json_mode=True, out=io.StringIO())
    await fr.send("choice", choice="AMEND")


async def test_counts_funnel_and_areas(any_app: App):
    app = any_app
    await round_in_progress(app)
    stats = await collect_stats(app.db, app.questionnaire, app.translations)
    json.dumps(stats)  # JSON-ready

    assert stats["totals"] == {"respondents": 5, "reports": 5, "submitted": 3, "draft": 1,
                               "cancelled": 1, "amended": 1, "amendments_in_progress": 1}
    status = by_code(stats["by_status"])
    assert {k: status[k]["total"] for k in status} == {"submitted": 3, "draft": 1,
                                                        "cancelled": 1}
    langs = by_code(stats["by_language"])
    assert {k: (v["submitted"], v["draft"], v["cancelled"]) for k, v in langs.items()} == {
        "fr": (1, 0, 0), "ar": (1, 0, 0), "zh": (1, 0, 0), "es": (0, 1, 0), "ru": (0, 0, 1)}
    assert langs["ar"]["labels"]["en"] == app.translations.language_name("ar")
    assert by_code(stats["by_channel"])["console"]["total"] == 5
    countries = by_code(stats["by_country"])
    assert {k: v["total"] for k, v in countries.items()} == {"fr": 2, "cn": 1, "(none)": 2}
    assert countries["cn"]["labels"]["zh"] == app.translations.country_name("zh", "cn")
    assert stats["by_country"][-1]["code"] == "(none)"
    orgs = by_code(stats["by_org_type"])
    assert {k: v["total"] for k, v in orgs.items()} == {"PARTY_GOV": 3, "NGO": 1,
                                                         "(none)": 1}
    assert orgs["NGO"]["labels"]["fr"] == label(app, "fr", "R4_orgtype", "NGO")

    funnel = {f["step"]: f["respondents"] for f in stats["funnel"]}
    assert funnel == {"contacted": 5, "started": 5, "section:R": 5, "section:S": 4,
                      "section:ACT": 4, "section:N": 4, "section:C": 3, "review": 3,
                      "submitted": 3}
    assert [f["step"] for f in stats["funnel"]][2:7] == [
        f"section:{s.id}" for s in app.questionnaire.sections]
    assert stats["drafts_stop"]["by_phase"] == {"asking": 1, "cancelled": 1}
    stops = {e["question"]: e["respondents"] for e in stats["drafts_stop"]["by_question"]}
    assert stops == {"R3_org": 1, "N1_assessed": 1}

    areas = by_code(stats["activity_areas"])
    assert {k: (v["activities"], v["reports"]) for k, v in areas.items()} == {
        "RISK_ASSESSMENT": (2, 2), "RISK_MANAGEMENT": (2, 2), "INSTITUTIONAL": (1, 1),
        "OTHER": (1, 1)}
    assert stats["activity_areas"][0]["code"] == "RISK_ASSESSMENT"
    assert areas["RISK_ASSESSMENT"]["bch_ref"] == "7C980FF4-3C5B-4711-81F9-BA6F28C12598"
    needs = by_code(stats["need_areas"])
    assert {k: (v["reports"], v["top3"]) for k, v in needs.items()} == {
        "INSTITUTIONAL": (2, 1), "RISK_ASSESSMENT": (2, 1), "MAINSTREAMING": (1, 1),
        "RISK_MANAGEMENT": (1, 0), "PUBLIC_AWARENESS": (1, 0)}


async def test_empty_database(any_app: App):
    stats = await collect_stats(any_app.db, any_app.questionnaire, any_app.translations)
    assert stats["totals"]["reports"] == 0 and stats["by_language"] == []
    assert all(f["respondents"] == 0 for f in stats["funnel"])
    text = format_stats(stats)
    assert text.count("(nothing yet)") == 11  # the tables, refused invitation links included
    assert "Completion funnel" in text


def _width(text: str) -> int:
    """Terminal columns: wide CJK characters take two, combining marks (Arabic shadda) none."""
    return sum(0 if unicodedata.combining(ch) else
               2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


@pytest.mark.parametrize("lang", ["en", "zh", "ar", "ru"])
async def test_text_tables_are_aligned_and_localized(app: App, lang: str):
    await round_in_progress(app)
    stats = await collect_stats(app.db, app.questionnaire, app.translations)
    text = format_stats(stats, lang)
    assert label(app, lang, "R4_orgtype", "PARTY_GOV")[:20] in text
    assert app.translations.country_name(lang, "cn") in text
    blocks = text.split("\n\n")[1:]
    assert len(blocks) == 12
    for block in blocks:
        lines = block.splitlines()[1:]  # title, then header, rule, rows
        if len(lines) < 3:
            continue
        rule = lines[1]
        assert set(rule) <= {"-", " "}
        # Numbers are right-aligned to the rule's end; names padded by display width.
        assert all(_width(line) == _width(rule) for line in lines[2:]), (lang, block)


@pytest.fixture
def stats_args():
    def make(**kw) -> argparse.Namespace:
        return argparse.Namespace(**{"json": False, "lang": None, "questionnaire": None, **kw})
    return make


async def test_cli_text_json_and_bad_options(app: App, capsys, stats_args):
    await round_in_progress(app)
    settings = load_settings(database_url=str(app.db.url))
    assert await run_stats(settings, stats_args()) == 0
    out = capsys.readouterr().out
    assert out.startswith("Reporting round: cpb_cb_survey")
    assert "respondents 5 · reports 5 · submitted 3" in out
    assert await run_stats(settings, stats_args(json=True, lang="fr")) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["totals"]["submitted"] == 3
    assert await run_stats(settings, stats_args(lang="de")) == 2
    assert capsys.readouterr().err.startswith("capbot stats: --lang: ")
    assert await run_stats(settings, stats_args(questionnaire="nope")) == 2
    assert capsys.readouterr().err.startswith("capbot stats: --questionnaire: ")


@pytest.fixture
async def app(tmp_path: Path) -> AsyncIterator[App]:
    application = await build_app(load_settings(
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'capbot.db'}"))
    try:
        yield application
    finally:
        await application.close()
