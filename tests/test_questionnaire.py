"""The questionnaire file: shipped content, and clear errors for broken files."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from bot.questionnaire import load_questionnaire, load_questionnaires
from bot.yamlfile import DataFileError, load_yaml

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "questionnaires" / "cpb_cb_survey.yaml"


def test_shipped_questionnaire_is_the_default_with_17_bch_areas() -> None:
    found = load_questionnaires(ROOT / "questionnaires")
    q = found["cpb_cb_survey"]
    assert q.default
    assert [s.id for s in q.sections] == ["R", "S", "ACT", "N", "C"]
    areas = q.code_lists["cb_area"]
    assert len(areas) == 17 and all(o.bch_ref for o in areas)
    assert q.questions["A9_areas"].repeated and not q.questions["N3_need_areas"].repeated
    assert q.questions["A9_areas_other"].other_of == "A9_areas"
    yes_no = q.questions["S1_any_activity"].options
    assert [o.code for o in yes_no] == ["YES", "NO"]  # YAML 1.1 would make these booleans


def _broken(tmp_path: Path, mutate) -> Path:
    data = load_yaml(SHIPPED)
    mutate(data)
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


@pytest.mark.parametrize(("mutate", "message"), [
    (lambda d: d["sections"][0]["questions"][0].update(type="colour"), "question R1_name"),
    (lambda d: d["sections"][0]["questions"].append({"id": "R1_name", "type": "text"}),
     "duplicate question id"),
    (lambda d: d["sections"][2].update(ask_if={"question": "NOPE", "equals": "YES"}),
     "unknown question NOPE"),
    (lambda d: d["sections"][0]["questions"][3].update(options="no_such_list"),
     "unknown code list no_such_list"),
    (lambda d: d["sections"][1]["questions"][0].update(
        ask_if={"question": "C1_consent", "equals": "YES"}), "comes later"),
    (lambda d: d["sections"][2]["questions"][3].update(
        ask_if={"question": "A1_title"}), "exactly one operator"),
])
def test_errors_name_the_file_the_id_and_the_problem(tmp_path: Path, mutate,
                                                     message: str) -> None:
    path = _broken(tmp_path, mutate)
    with pytest.raises(DataFileError) as err:
        load_questionnaire(path)
    assert str(path) in str(err.value)
    assert message in str(err.value)


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(DataFileError, match="file not found"):
        load_questionnaire(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("id: [", encoding="utf-8")
    with pytest.raises(DataFileError, match="invalid YAML"):
        load_questionnaire(bad)
