"""Question roles: the export and the statistics find the country, organization and areas
through the questionnaire, never by question id; a questionnaire without a role gets no such
breakdown."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml

from bot.app import App, build_app
from bot.config import load_settings
from bot.questionnaire import Questionnaire, load_questionnaire
from bot.yamlfile import DataFileError, load_yaml
from reports.export import Exporter
from reports.options import ExportOptionError, ExportOptions
from reports.stats import collect_stats, format_stats
from storage.reads import reading_connection
from tests.test_export import three_reports

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "questionnaires" / "cpb_cb_survey.yaml"
ROLE_KEYS = ("by_country", "by_org_type", "activity_areas", "need_areas")


@pytest.fixture
async def app(tmp_path: Path) -> AsyncIterator[App]:
    application = await build_app(load_settings(
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'capbot.db'}"))
    try:
        yield application
    finally:
        await application.close()


def _write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "changed.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return path


def without_roles(tmp_path: Path) -> Questionnaire:
    """The shipped questionnaire (same id, so the stored reports belong to it), no roles."""
    data = load_yaml(SHIPPED)
    for section in data["sections"]:
        for q in section["questions"]:
            q.pop("role", None)
    return load_questionnaire(_write(tmp_path, data))


def test_shipped_roles() -> None:
    qn = load_questionnaire(SHIPPED)
    assert {role: q.id for role, q in qn.roles.items()} == {
        "respondent_name": "R1_name", "organization": "R3_org", "org_type": "R4_orgtype",
        "country": "R5_country", "activity_areas": "A9_areas", "need_areas": "N3_need_areas",
        "top_needs": "N4_top3"}
    assert qn.by_role("country") is qn.questions["R5_country"]
    assert qn.by_role("respondent_email") is None


def _role(data: dict, section: int, question: int, role: str | None) -> None:
    q = data["sections"][section]["questions"][question]
    if role is None:
        q.pop("role", None)
    else:
        q["role"] = role


@pytest.mark.parametrize(("mutate", "message"), [
    (lambda d: _role(d, 0, 2, "respondent_name"),
     "role respondent_name is given to both question R1_name and question R3_org"),
    (lambda d: (_role(d, 0, 4, None), _role(d, 0, 3, "country")),
     "question R4_orgtype: role country needs type country, not single_choice"),
    (lambda d: (_role(d, 0, 2, None), _role(d, 2, 0, "organization")),
     "question A1_title: role organization needs one answer per report"),
    (lambda d: _role(d, 0, 1, "email_address"), "question R2_email"),
])
def test_role_errors_name_the_file_and_the_question(tmp_path: Path, mutate,
                                                    message: str) -> None:
    data = load_yaml(SHIPPED)
    mutate(data)
    path = _write(tmp_path, data)
    with pytest.raises(DataFileError) as err:
        load_questionnaire(path)
    assert str(path) in str(err.value)
    assert message in str(err.value)


async def test_without_roles_no_breakdown(app: App, tmp_path: Path) -> None:
    await three_reports(app)
    plain = without_roles(tmp_path)
    stats = await collect_stats(app.db, plain, app.translations)
    assert not set(ROLE_KEYS) & set(stats)
    assert stats["totals"]["submitted"] == 3
    text = format_stats(stats, "fr")
    assert "Reports by country" not in text and "areas of need" not in text
    assert "Reports by language" in text and "Completion funnel" in text
    full = await collect_stats(app.db, app.questionnaire, app.translations)
    assert set(ROLE_KEYS) <= set(full)

    exporter = Exporter(plain, app.translations, ExportOptions())
    async with reading_connection(app.db) as conn:
        rows = [row async for row in exporter.rows(conn, "submissions")]
    header, body = rows[0], rows[1:]
    assert len(body) == 3
    for column in ("organization", "country"):
        assert {row[header.index(column)] for row in body} == {""}
    assert "R5_country" in header  # the question's own column is still there
    book = {row[1]: row[-1] for row in exporter.codebook_rows() if row[0] == "submissions.csv"}
    assert "no question has the role country" in book["country"]

    with pytest.raises(ExportOptionError) as err:
        ExportOptions.parse(country="FR").pick_questionnaire({plain.id: plain})
    assert err.value.option == "--country"


def test_report_code_names_no_question_id() -> None:
    qn = load_questionnaire(SHIPPED)
    for folder in ("reports", "storage"):
        for path in sorted((ROOT / folder).glob("*.py")):
            text = path.read_text(encoding="utf-8")
            named = [qid for qid in qn.questions if re.search(rf"\b{qid}\b", text)]
            assert not named, (path.name, named)
