"""Catalog completeness, official wording, plurals, countries; broken files fail with a name."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from bot.i18n import FSI, LANGUAGES, PDI, Translations, placeholders, plural_categories
from bot.questionnaire import load_questionnaires
from bot.yamlfile import DataFileError

ROOT = Path(__file__).resolve().parent.parent
GLOSSARY = json.loads((ROOT / "locales" / "glossary.json").read_text(encoding="utf-8"))


def test_every_catalog_is_complete_with_matching_placeholders(content) -> None:
    _questionnaires, _, tr = content
    en_ui = tr._catalogs[("en", "ui")].messages
    for lang in LANGUAGES:
        ui = tr._catalogs[(lang, "ui")].messages
        assert set(ui) == set(en_ui), lang
        for key, text in en_ui.items():
            if isinstance(text, dict):
                assert set(ui[key]) == plural_categories(lang), (lang, key)
                assert placeholders(ui[key]["other"]) == placeholders(text["other"])
            else:
                assert placeholders(ui[key]) == placeholders(text), (lang, key)
                assert ui[key].strip(), (lang, key)


@pytest.mark.parametrize("lang", LANGUAGES)
def test_capacity_building_areas_use_the_official_wording(content, lang: str) -> None:
    _questionnaires, q, tr = content
    areas = q.questions["A9_areas"]
    for option in areas.options:
        official = " ".join(GLOSSARY["terms"][option.code][lang].split())
        assert tr.option_label(lang, q, areas, option.code) == official
        assert option.bch_ref == GLOSSARY["terms"][option.code]["bch_guid"]
    assert tr.option_label(lang, q, q.questions["S1_any_activity"], "YES") == \
        GLOSSARY["answers"]["YES"][lang]
    assert tr.question_prompt(lang, q, q.questions["N2_has_needs"]) == " ".join(
        GLOSSARY["questions"]["CB_STILL_HAS_NEEDS"][lang].split())


def test_plural_forms_follow_each_language(content) -> None:
    _, _, tr = content
    assert plural_categories("ar") == {"zero", "one", "two", "few", "many", "other"}
    assert plural_categories("ru") == {"one", "few", "many", "other"}
    forms = {n: tr.tn("ru", "answers_count", n) for n in (1, 3, 5, 21)}
    assert forms[1] != forms[3] != forms[5]
    assert forms[21].replace("21", "1") == forms[1]
    arabic = {tr.tn("ar", "answers_count", n) for n in (0, 1, 2, 3, 11, 100)}
    assert len(arabic) >= 5


def test_country_names_are_localized(content) -> None:
    _, _, tr = content
    assert tr.country_name("fr", "de") == "Allemagne"
    assert tr.country_name("es", "de") == "Alemania"
    assert tr.country_name("ru", "de") == "Германия"
    assert tr.country_name("zh", "de") == "德国"
    assert tr.country_name("ar", "de") == "ألمانيا"


def test_arabic_values_are_isolated_from_the_text_direction(content) -> None:
    _, _, tr = content
    text = tr.t("ar", "submitted", ref="CB-ABC2345", version=2)
    assert f"{FSI}CB-ABC2345{PDI}" in text
    assert FSI not in tr.t("fr", "submitted", ref="CB-ABC2345", version=2)


def _copy_locales(tmp_path: Path) -> Path:
    target = tmp_path / "locales"
    shutil.copytree(ROOT / "locales", target)
    return target


def _load(locales: Path) -> Translations:
    return Translations(locales, load_questionnaires(ROOT / "questionnaires").values())


def test_missing_string_names_file_and_key(tmp_path: Path) -> None:
    locales = _copy_locales(tmp_path)
    path = locales / "ru" / "ui.yaml"
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    del data["welcome_back"]
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    with pytest.raises(DataFileError) as err:
        _load(locales)
    assert "ru/ui.yaml" in str(err.value) and "welcome_back" in str(err.value)


def test_placeholder_mismatch_names_the_key(tmp_path: Path) -> None:
    locales = _copy_locales(tmp_path)
    path = locales / "zh" / "ui.yaml"
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    data["progress"] = "第{n}题"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    with pytest.raises(DataFileError) as err:
        _load(locales)
    assert "progress" in str(err.value) and "placeholders" in str(err.value)


def test_wrong_plural_categories_are_refused(tmp_path: Path) -> None:
    locales = _copy_locales(tmp_path)
    path = locales / "ar" / "ui.yaml"
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    data["answers_count"] = {"one": "{count}", "other": "{count}"}
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    with pytest.raises(DataFileError, match="answers_count"):
        _load(locales)


def test_missing_or_corrupt_locale_file(tmp_path: Path) -> None:
    locales = _copy_locales(tmp_path)
    (locales / "es" / "cpb_cb_survey.yaml").unlink()
    with pytest.raises(DataFileError, match=r"es/cpb_cb_survey.yaml: file not found"):
        _load(locales)
    locales = _copy_locales(tmp_path / "b")
    (locales / "fr" / "ui.yaml").write_text("welcome: [unclosed", encoding="utf-8")
    with pytest.raises(DataFileError, match=r"fr/ui.yaml: invalid YAML"):
        _load(locales)
