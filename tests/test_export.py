"""The CSV export: real conversations in, files read back with pandas and csv, every option."""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import subprocess
import sys
import zipfile
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, insert, select, update

from bot.app import App, build_app
from bot.config import load_settings
from bot.i18n import LANGUAGES
from handlers.console import ConsoleChannel
from reports import csvfiles
from reports.cells import FORMULA_TRIGGERS, neutralise, number_cell, restore
from reports.cli import run_export
from reports.csvfiles import export_dir, export_zip
from reports.export import Exporter
from reports.options import ExportOptionError, ExportOptions
from storage.models import answers, respondents, submissions
from storage.reads import reading_connection

FORMULA = '=HYPERLINK("http://evil.example/x","click")'

# -- fixtures -----------------------------------------------------------------------------------


@pytest.fixture
async def app(tmp_path: Path) -> AsyncIterator[App]:
    """The real composition root (shipped questionnaire and catalogs) on a fresh SQLite file."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'capbot.db'}"
    application = await build_app(load_settings(database_url=url))
    try:
        yield application
    finally:
        await application.close()


@pytest.fixture
async def any_app(database_url: str) -> AsyncIterator[App]:
    """The same, once on SQLite and once on a real PostgreSQL."""
    application = await build_app(load_settings(database_url=database_url))
    try:
        yield application
    finally:
        await application.close()


def label(app: App, lang: str, qid: str, code: str) -> str:
    return app.translations.option_label(lang, app.questionnaire,
                                         app.questionnaire.questions[qid], code)


# -- conversations ------------------------------------------------------------------------------

Step = tuple[str, str]  # ("text", typed) | ("choice", code)

PROFILE = [("text", "Marie Dupont"), ("text", "marie@example.org"),
           ("text", "Ministère de l'Environnement"), ("choice", "PARTY_GOV"), ("text", "FR")]
ACTIVITY_1 = [
    ("text", "Atelier sur l'évaluation des risques"), ("choice", "PROJECT"), ("text", "1, 3"),
    ("choice", "NATIONAL"), ("text", "FR, BE"), ("choice", "COMPLETED"), ("text", "2023-05"),
    ("text", "2023-11"), ("text", "3, 4"), ("choice", "TRAINING_WORKSHOP"), ("choice", "DONE"),
    ("text", "/skip"), ("text", "25"), ("text", "2, 3"), ("text", "15000 USD"),
    ("text", "Formé 25 évaluateurs.\nDeux sessions."), ("text", "/skip"),
]
NEEDS_AND_CLOSE = [
    ("choice", "YES"), ("choice", "YES_SOME"), ("text", "1, 3"), ("text", "/skip"),
    ("text", "/skip"), ("choice", "YES"), ("choice", "YES"), ("text", "/skip"),
    ("choice", "SUBMIT"),
]


def french_two_activities() -> list[Step]:
    second = [
        ("text", "-Programme régional"), ("choice", "PROGRAMME"), ("text", "1, 2"),
        ("choice", "GLOBAL"), ("choice", "PROPOSED"), ("text", "/skip"), ("text", "/skip"),
        ("text", "1, 17"), ("text", "+Autre domaine"), ("text", "2, 5"), ("text", "/skip"),
        ("text", "40"), ("text", "/skip"), ("text", "/skip"), ("text", "/skip"),
        ("text", "https://example.org/p"), ("choice", "NO"),
    ]
    return [*PROFILE, ("choice", "YES"), *ACTIVITY_1, ("choice", "YES"), *second,
            *NEEDS_AND_CLOSE]


def arabic_formula() -> list[Step]:
    """No activity; the organization is a formula a spreadsheet would run."""
    return [("text", "مريم"), ("text", "maryam@example.org"), ("text", FORMULA),
            ("choice", "NGO"), ("text", "/skip"), ("choice", "NO"), ("choice", "NO"),
            ("choice", "NO"), ("choice", "YES"), ("text", "@تعليق: شكرا"), ("choice", "SUBMIT")]


def chinese_one_activity() -> list[Step]:
    return [("text", "李娜"), ("text", "li@example.cn"), ("text", "生态环境部"),
            ("choice", "PARTY_GOV"), ("text", "CN"), ("choice", "YES"),
            ("text", "生物安全培训 «Москва»"), *ACTIVITY_1[1:], ("choice", "NO"),
            ("choice", "NO"), ("choice", "YES"), ("text", "1, 2, 3, 4, 5"),
            ("text", "1, 2, 3"), ("text", "/skip"), ("text", "/skip"), ("choice", "NO"),
            ("choice", "YES"), ("text", "/skip"), ("choice", "SUBMIT")]


async def converse(app: App, user: str, lang: str, steps: list[Step], *,
                   finish: bool = True) -> ConsoleChannel:
    ch = ConsoleChannel(app.service, user, language=lang, json_mode=True, out=io.StringIO())
    await ch.send("start", "/start")
    for kind, value in steps:
        result = (await ch.send("choice", choice=value) if kind == "choice"
                  else await ch.send("text", value))
        errors = [r.text for r in result.replies if r.kind == "error"]
        assert not errors, (user, kind, value, errors)
    if finish:
        assert result.awaiting == "done", (user, result.awaiting)
    return ch


async def three_reports(app: App) -> None:
    await converse(app, "fr1", "fr", french_two_activities())
    await converse(app, "ar1", "ar", arabic_formula())
    await converse(app, "zh1", "zh", chinese_one_activity())


# -- reading back -------------------------------------------------------------------------------


def assert_excel_layout(data: bytes) -> None:
    """A BOM, and every record ends with CRLF (a line break inside a quoted field may not)."""
    assert data.startswith(b"\xef\xbb\xbf")
    text = data.decode("utf-8-sig")
    assert text.endswith("\r\n")
    quoted = False
    for i, ch in enumerate(text):
        if ch == '"':
            quoted = not quoted  # a doubled quote inside a field toggles twice
        elif not quoted and ch == "\n":
            assert text[i - 1] == "\r", text[max(0, i - 40):i]
        elif not quoted and ch == "\r":
            assert text[i + 1] == "\n", text[max(0, i - 40):i]


def read_csv_module(data: bytes) -> list[dict[str, str]]:
    assert data.startswith(b"\xef\xbb\xbf"), "UTF-8 BOM for Excel"
    text = data.decode("utf-8-sig")
    return list(csv.DictReader(io.StringIO(text, newline="")))


def read_pandas(data: bytes) -> pd.DataFrame:
    return pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False,
                       encoding="utf-8-sig")


def zip_files(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as zf:
        assert zf.testzip() is None
        return {name: zf.read(name) for name in zf.namelist()}


def dir_files(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.glob("*.csv"))}


async def stored_answers(app: App, status: str = "submitted") -> list[tuple]:
    """(submission_id, question_id, repeat_index, value_code) of the latest versions."""
    async with app.db.connect() as conn:
        exporter = Exporter(app.questionnaire, app.translations, ExportOptions(status=status))
        rows = await conn.execute(
            select(answers.c.submission_id, answers.c.question_id, answers.c.repeat_index,
                   answers.c.value_code)
            .select_from(answers.join(submissions, submissions.c.id == answers.c.submission_id))
            .where(exporter.selection()))
        return sorted(tuple(r) for r in rows)


def cli_args(out: Path | str, **kw: Any) -> argparse.Namespace:
    base = {"out": str(out), "status": "submitted", "since": None, "until": None,
            "channel": None, "country": None, "questionnaire": None, "lang": None,
            "split_multi": False}
    base.update(kw)
    return argparse.Namespace(**base)


async def export_files(app: App, out: Path, **options: Any) -> dict[str, bytes]:
    opts = ExportOptions.parse(**options)
    if out.suffix == ".zip":
        await export_zip(app.db, app.questionnaires, app.translations, opts, out)
        return zip_files(out)
    await export_dir(app.db, app.questionnaires, app.translations, opts, out)
    return dir_files(out)


# -- the acceptance scenario --------------------------------------------------------------------


async def test_three_languages_zip_and_dir_every_answer_once(any_app: App, tmp_path: Path):
    app = any_app
    await three_reports(app)
    stored = await stored_answers(app)
    assert len({sid for sid, *_ in stored}) == 3

    files = await export_files(app, tmp_path / "x.zip")
    assert sorted(files) == ["activities.csv", "answers.csv", "codebook.csv", "submissions.csv"]
    for name, data in files.items():
        assert_excel_layout(data)
        assert read_csv_module(data) == read_pandas(data).to_dict("records"), name

    long = read_pandas(files["answers.csv"])
    exported = sorted((int(r.submission_id), r.question_id, int(r.repeat_index),
                       restore(r.value_code) if r.value_code else None)
                      for r in long.itertuples())
    stored_cmp = sorted((sid, q, rep, code if code else None) for sid, q, rep, code in stored)
    assert exported == stored_cmp  # every answer, exactly once, with the right submission

    subs = read_pandas(files["submissions.csv"]).set_index("language")
    assert set(subs.index) == {"fr", "ar", "zh"}
    assert subs.loc["ar", "organization"] == "'" + FORMULA
    assert subs.loc["ar", "R3_org"] == "'" + FORMULA
    assert subs.loc["ar", "C2_comments"] == "'@تعليق: شكرا"
    assert subs.loc["zh", "respondent"] == "李娜"
    assert subs.loc["zh", "R3_org"] == "生态环境部"
    assert subs.loc["fr", "country"] == "fr" and subs.loc["zh", "country"] == "cn"
    assert subs.loc["ar", "country"] == ""
    assert set(subs["completeness"]) == {"1.00"}
    assert set(subs["status"]) == {"submitted"} and set(subs["version"]) == {"1"}
    assert subs.loc["zh", "N3_need_areas"] == "INSTITUTIONAL;MAINSTREAMING;RISK_ASSESSMENT;" \
                                              "RISK_MANAGEMENT;PUBLIC_AWARENESS"
    no_formula = [cell for name in ("submissions.csv", "activities.csv", "answers.csv")
                  for row in read_csv_module(files[name]) for cell in row.values()
                  if cell[:1] in FORMULA_TRIGGERS]
    assert no_formula == []

    acts = read_pandas(files["activities.csv"])
    fr_id = subs.loc["fr", "submission_id"]
    zh_id = subs.loc["zh", "submission_id"]
    assert sorted(acts["submission_id"]) == sorted([fr_id, fr_id, zh_id])
    fr_acts = acts[acts.submission_id == fr_id].set_index("repeat_index")
    assert fr_acts.loc["0", "A1_title"] == "Atelier sur l'évaluation des risques"
    assert fr_acts.loc["0", "A5_countries"] == "fr;be"
    assert fr_acts.loc["0", "A14_budget"] == "15000"
    assert fr_acts.loc["0", "A14_budget_currency"] == "USD"
    assert fr_acts.loc["0", "A15_summary"] == "Formé 25 évaluateurs.\nDeux sessions."
    assert fr_acts.loc["1", "A1_title"] == "'-Programme régional"
    assert fr_acts.loc["1", "A9_areas"] == "INSTITUTIONAL;OTHER"
    assert fr_acts.loc["1", "A9_areas_other"] == "'+Autre domaine"
    assert fr_acts.loc["1", "A12_trained"] == "40"
    assert acts[acts.submission_id == zh_id].iloc[0]["A1_title"] == "生物安全培训 «Москва»"

    # The same export as a directory, with Arabic labels.
    out = tmp_path / "dir"
    files_ar = await export_files(app, out, lang="ar")
    assert sorted(files_ar) == sorted(files)
    subs_ar = read_pandas(files_ar["submissions.csv"]).set_index("language")
    assert subs_ar.loc["fr", "R4_orgtype_label"] == label(app, "ar", "R4_orgtype", "PARTY_GOV")
    assert subs_ar.loc["fr", "country_label"] == app.translations.country_name("ar", "fr")
    assert subs_ar.loc["fr", "S1_any_activity_label"] == app.translations.raw("ar", "yes")
    long_ar = read_pandas(files_ar["answers.csv"])
    assert list(long_ar.columns) == ["submission_id", "question_id", "repeat_index",
                                     "value_code", "value_label", "answered_at",
                                     "channel_message_id", "channel"]
    assert len(long_ar) == len(long)
    areas = long_ar[(long_ar.question_id == "A9_areas")].set_index("value_code")
    a9 = app.questionnaire.questions["A9_areas"]
    official = app.translations.option_label("ar", app.questionnaire, a9, "INSTITUTIONAL")
    assert areas.loc["INSTITUTIONAL;OTHER", "value_label"] == official + "; " + \
        app.translations.option_label("ar", app.questionnaire, a9, "OTHER")
    assert any("\u0600" <= ch <= "\u06ff" for ch in official)  # BCH wording, in Arabic
    text_labels = long_ar[long_ar.question_id == "R1_name"].value_label
    assert set(text_labels) == {""}
    assert not list(out.glob(".*")), "no temporary file left behind"


async def test_codebook_lists_every_column_and_code_in_six_languages(app: App, tmp_path: Path):
    files = await export_files(app, tmp_path / "out", split_multi=True, lang="fr")
    book = read_pandas(files["codebook.csv"])
    assert list(book.columns)[:9] == ["file", "column", "question_id", "section", "type",
                                      "required", "ask_if", "option_list", "code"]
    for name in ("submissions.csv", "activities.csv", "answers.csv"):
        header = next(csv.reader(io.StringIO(files[name].decode("utf-8-sig"))))
        described = book[book.file == name].column.drop_duplicates().tolist()
        assert described == header, name
        assert book[(book.file == name) & (book.code == "")].column.is_unique
    areas = book[(book.column == "A9_areas") & (book.code != "")]
    assert len(areas) == 17
    risk = areas.set_index("code").loc["RISK_ASSESSMENT"]
    assert risk.bch_ref == "7C980FF4-3C5B-4711-81F9-BA6F28C12598"
    a9 = app.questionnaire.questions["A9_areas"]
    for lang in LANGUAGES:
        assert risk[f"label_{lang}"] == app.translations.option_label(
            lang, app.questionnaire, a9, "RISK_ASSESSMENT")
    assert len({risk[f"label_{lang}"] for lang in LANGUAGES}) == 6
    kinds = book[(book.column == "A2_kind") & (book.code == "PROJECT")].iloc[0]
    assert [kinds[f"label_{lang}"] for lang in LANGUAGES] == [
        label(app, lang, "A2_kind", "PROJECT") for lang in LANGUAGES]
    assert len({kinds[f"label_{lang}"] for lang in LANGUAGES}) == 6
    prompt = book[(book.column == "R3_org") & (book.code == "")].iloc[0]
    assert all(prompt[f"label_{lang}"] for lang in LANGUAGES)
    assert all(book[(book.column == "A9_areas") & (book.code == "")].bch_ref == "")
    country = book[(book.column == "R5_country") & (book.code == "ke")].iloc[0]
    assert country.label_en == "Kenya" and country.label_zh and country.label_ru
    split = book[book.column == "A9_areas/RISK_ASSESSMENT"].iloc[0]
    assert split.code == "RISK_ASSESSMENT" and split.bch_ref == risk.bch_ref
    assert book[book.column == "R5_country"].iloc[0].required == "conditional"
    assert '"PARTY_GOV"' in book[book.column == "N7_coord_mech"].iloc[0].ask_if
    assert book[book.column == "A1_title"].iloc[0].ask_if == \
        '{"question":"S1_any_activity","equals":"YES"}'


# -- options ------------------------------------------------------------------------------------


async def _submissions_csv(app: App, tmp_path: Path, name: str, **options: Any) -> pd.DataFrame:
    files = await export_files(app, tmp_path / name, **options)
    return read_pandas(files["submissions.csv"])


async def test_status_draft_all_and_amendment_exports_latest_version(any_app: App,
                                                                     tmp_path: Path):
    app = any_app
    await three_reports(app)
    # A fourth respondent stops half-way.
    await converse(app, "es1", "es", PROFILE[:3], finish=False)
    # The French report is amended: a new version, first draft then submitted.
    fr = ConsoleChannel(app.service, "fr1", language="fr", json_mode=True, out=io.StringIO())
    await fr.send("choice", choice="AMEND")
    await fr.send("text", "edit 3")
    await fr.send("text", "Ministère de la Transition écologique")

    df = await _submissions_csv(app, tmp_path, "a", status="submitted")
    row = df.set_index("language").loc["fr"]
    assert (row.version, row.R3_org) == ("1", "Ministère de l'Environnement")
    df = await _submissions_csv(app, tmp_path, "b", status="draft")
    assert sorted(zip(df.language, df.version, strict=False)) == [("es", "1"), ("fr", "2")]
    es = df.set_index("language").loc["es"]
    assert es.R3_org == "Ministère de l'Environnement" and es.submitted_at == ""
    assert float(es.completeness) < 1 and es.status == "draft"

    result = await fr.send("choice", choice="SUBMIT")
    assert result.awaiting == "done"
    df = await _submissions_csv(app, tmp_path, "c")
    assert len(df) == 3
    row = df.set_index("language").loc["fr"]
    assert (row.version, row.R3_org) == ("2", "Ministère de la Transition écologique")
    assert row.reference.startswith("CB-")
    files = await export_files(app, tmp_path / "c2")
    long = read_pandas(files["answers.csv"])
    assert set(long.submission_id) == set(df.submission_id)  # no superseded answers
    acts = read_pandas(files["activities.csv"])
    assert set(acts.submission_id) == {row.submission_id, df.set_index("language").loc[
        "zh", "submission_id"]}
    df = await _submissions_csv(app, tmp_path, "d", status="all")
    assert sorted(df.language) == ["ar", "es", "fr", "zh"]
    # Cancelled (paused) conversations.
    es = ConsoleChannel(app.service, "es1", language="es", json_mode=True, out=io.StringIO())
    await es.send("text", "/cancel")
    df = await _submissions_csv(app, tmp_path, "e", status="cancelled")
    assert list(df.language) == ["es"]
    assert (await _submissions_csv(app, tmp_path, "f", status="draft")).empty


async def test_since_until_channel_country_filters(any_app: App, tmp_path: Path):
    app = any_app
    await three_reports(app)
    async with app.db.begin() as conn:
        ids = dict((await conn.execute(select(submissions.c.language, submissions.c.id))).all())
        for lang, day in (("fr", "2024-03-10 12:00:00"), ("ar", "2024-03-11 23:59:59"),
                          ("zh", "2024-03-12 00:00:00")):
            await conn.execute(update(submissions).where(submissions.c.id == ids[lang]).values(
                updated_at=datetime.fromisoformat(day).replace(tzinfo=UTC)))
        await conn.execute(update(submissions).where(submissions.c.id == ids["zh"]).values(
            channel="telegram"))

    async def langs(name: str, **opts: Any) -> list[str]:
        return sorted((await _submissions_csv(app, tmp_path, name, **opts)).language)

    assert await langs("s1", since="2024-03-11") == ["ar", "zh"]
    assert await langs("s2", until="2024-03-11") == ["ar", "fr"]
    assert await langs("s3", since="2024-03-11", until="2024-03-11") == ["ar"]
    assert await langs("s4", since="2024-03-11T23:00:00+00:00") == ["ar", "zh"]
    assert await langs("s5", until="2024-03-11T23:30:00+01:00") == ["fr"]  # 22:30 UTC
    assert await langs("s6", until="2024-03-11T23:30:00-01:00") == ["ar", "fr", "zh"]
    assert await langs("c1", channel="telegram") == ["zh"]
    assert await langs("c2", channel="console") == ["ar", "fr"]
    assert await langs("c3", channel="email") == []
    assert await langs("k1", country="CN") == ["zh"]
    assert await langs("k2", country="fra") == ["fr"]
    assert await langs("k3", country="ke") == []
    files = await export_files(app, tmp_path / "k4", country="fr")
    assert {r["submission_id"] for r in read_csv_module(files["answers.csv"])} == {
        str(ids["fr"])}
    assert len(read_csv_module(files["activities.csv"])) == 2


async def test_split_multi_columns(app: App, tmp_path: Path):
    await three_reports(app)
    files = await export_files(app, tmp_path / "split.zip", split_multi=True)
    acts = read_pandas(files["activities.csv"])
    cols = [c for c in acts.columns if c.startswith("A9_areas")]
    assert cols[:3] == ["A9_areas", "A9_areas/INSTITUTIONAL", "A9_areas/MAINSTREAMING"]
    assert cols[-1] == "A9_areas_other"
    assert len(cols) == 2 + 17
    first = acts.iloc[0]
    chosen = {c.split("/")[1] for c in cols[1:-1] if first[c] == "1"}
    assert chosen == set(first.A9_areas.split(";"))
    assert {first[c] for c in cols[1:-1]} == {"0", "1"}
    subs = read_pandas(files["submissions.csv"]).set_index("language")
    # Not asked (no needs in the Arabic report): the 0/1 columns stay empty.
    assert subs.loc["ar", "N3_need_areas/RISK_ASSESSMENT"] == ""
    assert subs.loc["fr", "N3_need_areas/RISK_ASSESSMENT"] == "1"
    assert subs.loc["fr", "N3_need_areas/MAINSTREAMING"] == "0"
    assert "N4_top3/INSTITUTIONAL" in subs.columns  # options_from: the source list
    assert not any(c.startswith("R5_country/") for c in subs.columns)  # not multi_choice
    no_split = read_pandas((await export_files(app, tmp_path / "n.zip"))["activities.csv"])
    assert not any("/" in c for c in no_split.columns)


async def test_column_order_follows_questionnaire(app: App, tmp_path: Path):
    files = await export_files(app, tmp_path / "o")
    header = read_pandas(files["submissions.csv"]).columns.tolist()
    assert header[:15] == ["submission_id", "reference", "version", "questionnaire_version",
                           "respondent_id", "respondent", "organization", "country", "channel",
                           "language", "status", "started_at", "updated_at", "submitted_at",
                           "completeness"]
    top = [q.id for q in app.questionnaire.questions.values() if not q.repeated]
    assert header[15:] == top
    rep = [q.id for q in app.questionnaire.questions.values() if q.repeated]
    acts = read_pandas(files["activities.csv"]).columns.tolist()
    budget = rep.index("A14_budget") + 1
    assert acts == ["submission_id", "reference", "version", "repeat_index",
                    *rep[:budget], "A14_budget_currency", *rep[budget:]]


async def test_empty_database(any_app: App, tmp_path: Path):
    app = any_app
    files = await export_files(app, tmp_path / "empty.zip", status="all", lang="zh")
    for name in ("submissions.csv", "activities.csv", "answers.csv"):
        assert read_pandas(files[name]).empty
        assert len(read_csv_module(files[name])) == 0
        assert files[name].count(b"\r\n") == 1  # the header only
    assert len(read_pandas(files["codebook.csv"])) > 100
    buffer = io.BytesIO()
    summary = await export_zip(app.db, app.questionnaires, app.translations, ExportOptions(),
                               buffer)
    assert summary.path is None and summary.rows["answers"] == 0
    assert summary.rows["codebook"] > 100
    with zipfile.ZipFile(io.BytesIO(buffer.getvalue())) as zf:
        assert sorted(zf.namelist()) == sorted(files)


async def test_amounts_and_negative_numbers_are_not_mangled(app: App, tmp_path: Path):
    """Numbers of number-typed questions stay numbers; the same text elsewhere is quoted."""
    await converse(app, "fr1", "fr", french_two_activities())
    async with app.db.begin() as conn:
        await conn.execute(update(answers).where(answers.c.question_id == "A12_trained")
                           .values(value_code="-3"))
        await conn.execute(update(answers).where(answers.c.question_id == "A1_title")
                           .values(value_code="-3"))
        await conn.execute(update(answers).where(answers.c.question_id == "A14_budget")
                           .values(value_code="-1.5 EUR"))
    files = await export_files(app, tmp_path / "n")
    acts = read_pandas(files["activities.csv"])
    assert list(acts.A12_trained) == ["-3", "-3"]
    assert list(acts.A1_title) == ["'-3", "'-3"]
    assert acts.A14_budget[0] == "-1.5" and acts.A14_budget_currency[0] == "EUR"
    assert pd.read_csv(io.BytesIO(files["activities.csv"]))["A12_trained"].dtype.kind == "i"
    long = read_pandas(files["answers.csv"])
    assert set(long[long.question_id == "A12_trained"].value_code) == {"-3"}
    assert set(long[long.question_id == "A1_title"].value_code) == {"'-3"}
    assert set(long[long.question_id == "A14_budget"].value_code) == {"'-1.5 EUR"}


# -- formula neutralisation and Unicode round trip ----------------------------------------------


async def test_reading_connection_sees_one_snapshot(any_app: App):
    """Both cursors of an export read the same data while conversations commit meanwhile."""
    app = any_app
    await converse(app, "fr1", "fr", french_two_activities())
    count = select(func.count()).select_from(answers)
    async with reading_connection(app.db) as conn:
        before = (await conn.execute(count)).scalar_one()
        await converse(app, "zh1", "zh", chinese_one_activity())  # commits meanwhile
        during = (await conn.execute(count)).scalar_one()
    async with reading_connection(app.db) as conn:
        after = (await conn.execute(count)).scalar_one()
    assert before == during < after


@pytest.mark.parametrize("text,expected", [
    ("=1+1", "'=1+1"), ("+33 1 23", "'+33 1 23"), ("-x", "'-x"), ("@SUM(A1)", "'@SUM(A1)"),
    ("\t=1", "'\t=1"), ("\r=1", "'\r=1"), ("\n=1", "'\n=1"), ("＝1+1", "'＝1+1"),
    ("'=1", "''=1"), ("''+1", "'''+1"), ("'plain", "'plain"), ("", ""), ("a=1", "a=1"),
    ("Ministère", "Ministère"), ("中文", "中文"), ("-", "'-"),
])
def test_neutralise(text: str, expected: str):
    assert neutralise(text) == expected
    assert restore(neutralise(text)) == text


@pytest.mark.parametrize("text,expected", [
    ("-5", "-5"), ("12", "12"), ("-1.25", "-1.25"), ("1e5", "1e5"), ("-5+3", "'-5+3"),
    ("=5", "'=5"), ("+5", "'+5"), ("- 5", "'- 5"),
])
def test_number_cells(text: str, expected: str):
    assert number_cell(text) == expected


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(texts=st.lists(st.text(alphabet=st.characters(blacklist_categories=("Cs",)),
                              max_size=60), min_size=1, max_size=4))
async def test_unicode_round_trip(app: App, tmp_path_factory: pytest.TempPathFactory,
                                  texts: list[str]):
    """Any text stored as an answer reads back exactly (after `restore`) with csv and pandas."""
    async with app.db.begin() as conn:
        await conn.execute(answers.delete())
        await conn.execute(submissions.delete())
        await conn.execute(respondents.delete())
        rid = (await conn.execute(insert(respondents).values(
            channel="email", channel_user_id="x@example.org", state={}, unreachable=False,
            created_at=_now(), updated_at=_now()).returning(respondents.c.id))).scalar_one()
        sid = (await conn.execute(insert(submissions).values(
            respondent_id=rid, questionnaire_id=app.questionnaire.id, questionnaire_version="1",
            reference="CB-PROP", version=1, status="submitted", language="ru",
            channel="email", started_at=_now(), updated_at=_now(), submitted_at=_now())
            .returning(submissions.c.id))).scalar_one()
        qids = ["R1_name", "R3_org", "C2_comments", "A1_title"]
        await conn.execute(insert(answers), [
            {"submission_id": sid, "question_id": qid, "repeat_index": 0, "value": text,
             "value_code": text, "answered_at": _now(), "channel_message_id": text}
            for qid, text in zip(qids, texts, strict=False)])
    out = tmp_path_factory.mktemp("rt") / "rt.zip"
    files = await export_files(app, out)
    expected = dict(zip(qids, texts, strict=False))
    for reader in (read_csv_module, lambda d: read_pandas(d).to_dict("records")):
        long = reader(files["answers.csv"])
        assert {r["question_id"]: restore(r["value_code"]) for r in long} == expected
        assert {restore(r["channel_message_id"]) for r in long} == set(texts)
        subs = reader(files["submissions.csv"])
        for qid, text in expected.items():
            if qid != "A1_title":
                assert restore(subs[0][qid]) == text
        if "A1_title" in expected:
            assert restore(reader(files["activities.csv"])[0]["A1_title"]) == \
                expected["A1_title"]


def _now() -> datetime:
    return datetime.now(UTC)


# -- bad input and the command line -------------------------------------------------------------


@pytest.mark.parametrize("kwargs,option", [
    ({"status": "done"}, "--status"), ({"since": "yesterday"}, "--since"),
    ({"until": "2024-13-01"}, "--until"), ({"since": "2024-05-02", "until": "2024-05-01"},
                                           "--until"),
    ({"channel": "fax"}, "--channel"), ({"country": "Atlantis"}, "--country"),
    ({"lang": "de"}, "--lang"),
])
def test_option_errors_name_the_option(kwargs: dict[str, str], option: str):
    with pytest.raises(ExportOptionError) as err:
        ExportOptions.parse(**kwargs)
    assert err.value.option == option
    assert str(err.value).startswith(option + ": ")
    assert "\n" not in str(err.value)


def test_options_parse_normalises():
    opts = ExportOptions.parse(status="ALL", channel="Email", country="Kenya", lang="ZH",
                               since="2024-01-31", until="2024-02-01")
    assert (opts.status, opts.channel, opts.country, opts.lang) == ("all", "email", "ke", "zh")
    assert opts.since.isoformat() == "2024-01-31T00:00:00+00:00"
    assert opts.until.isoformat() == "2024-02-02T00:00:00+00:00"  # the whole day included
    with pytest.raises(ExportOptionError, match="--questionnaire"):
        ExportOptions(questionnaire="nope").pick_questionnaire({})


@pytest.fixture
def cli_settings(tmp_path: Path):
    return load_settings(database_url=f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}")


@pytest.mark.parametrize("kwargs,option", [
    ({"status": "maybe"}, "--status"), ({"since": "2024-02-30"}, "--since"),
    ({"until": "soon"}, "--until"), ({"questionnaire": "other"}, "--questionnaire"),
    ({"lang": "xx"}, "--lang"), ({"channel": "sms"}, "--channel"),
])
async def test_cli_bad_option_exits_2_with_one_line(cli_settings, tmp_path: Path, capsys,
                                                    kwargs: dict[str, str], option: str):
    code = await run_export(cli_settings, cli_args(tmp_path / "x.zip", **kwargs))
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith(f"capbot export: {option}: ") and err.count("\n") == 1
    assert not list(tmp_path.glob("x.zip*"))


@pytest.mark.parametrize("make_out", [
    lambda p: p / "missing-dir" / "x.zip",
    lambda p: p / "a-file" / "x.zip",
    lambda p: p / "a-file",
    lambda p: p / "a-file" / "sub",
])
async def test_cli_unwritable_out_exits_2(cli_settings, tmp_path: Path, capsys, make_out):
    (tmp_path / "a-file").write_text("not a directory")
    code = await run_export(cli_settings, cli_args(make_out(tmp_path)))
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("capbot export: --out: ") and err.count("\n") == 1


async def test_cli_unwritable_directory_exits_2(cli_settings, tmp_path: Path, capsys,
                                                monkeypatch):
    """A directory the process may not write into (simulated: tests may run as root)."""
    def refuse(*args: Any, **kwargs: Any):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(csvfiles.tempfile, "mkstemp", refuse)
    code = await run_export(cli_settings, cli_args(tmp_path / "x.zip"))
    assert code == 2
    assert capsys.readouterr().err == (f"capbot export: --out: cannot write in {tmp_path}: "
                                       "Permission denied\n")


async def test_cli_writes_zip_and_directory(app: App, tmp_path: Path, capsys):
    await three_reports(app)
    settings_ = load_settings(database_url=str(app.db.url))
    assert await run_export(settings_, cli_args(tmp_path / "x.zip")) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"wrote {tmp_path / 'x.zip'} (cpb_cb_survey): 3 submissions, "
                          "3 activities, ")
    assert sorted(zip_files(tmp_path / "x.zip")) == ["activities.csv", "answers.csv",
                                                     "codebook.csv", "submissions.csv"]
    args = cli_args(tmp_path / "d", lang="ar", split_multi=True, status="all", country="CN",
                    channel="console", since="2000-01-01", until="2999-12-31",
                    questionnaire="cpb_cb_survey")
    assert await run_export(settings_, args) == 0
    subs = read_pandas((tmp_path / "d" / "submissions.csv").read_bytes())
    assert list(subs.language) == ["zh"] and "R4_orgtype_label" in subs.columns
    assert not [p for p in (tmp_path / "d").iterdir() if p.name.startswith(".")]


def _capbot(args: list[str], db_url: str, cwd: Path) -> subprocess.CompletedProcess:
    """The real command line, as the Secretariat runs it."""
    env = {**os.environ, "CAPBOT_DATABASE_URL": db_url}
    return subprocess.run([sys.executable, "-m", "bot", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=300, check=False)


async def test_capbot_command_end_to_end(app: App, tmp_path: Path):
    """fr, ar, zh reports; `capbot export --out x.zip`, `--out DIR --lang ar`; every file read
    with pandas and csv; bad input exits with 2 and one line naming the option."""
    await three_reports(app)
    url = str(app.db.url)
    done = _capbot(["export", "--out", "x.zip"], url, tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("wrote x.zip (cpb_cb_survey): 3 submissions, 3 activities")
    done = _capbot(["export", "--out", "dir", "--lang", "ar"], url, tmp_path)
    assert done.returncode == 0, done.stderr
    stored = await stored_answers(app)
    for files in (zip_files(tmp_path / "x.zip"), dir_files(tmp_path / "dir")):
        for name, data in files.items():
            assert read_csv_module(data) == read_pandas(data).to_dict("records"), name
        long = read_csv_module(files["answers.csv"])
        assert sorted((int(r["submission_id"]), r["question_id"], int(r["repeat_index"]),
                       restore(r["value_code"]) or None) for r in long) == \
            sorted((sid, q, rep, code or None) for sid, q, rep, code in stored)
        orgs = {r["language"]: r["organization"]
                for r in read_csv_module(files["submissions.csv"])}
        assert orgs["ar"] == "'" + FORMULA
    assert "R4_orgtype_label" in read_pandas(dir_files(tmp_path / "dir")["submissions.csv"])
    for args, option in ((["--status", "final"], "--status"), (["--since", "1/2/2024"],
                                                                 "--since"),
                         (["--out", "/nonexistent/x.zip"], "--out")):
        argv = ["export", "--out", "y.zip", *args] if args[0] != "--out" else ["export", *args]
        done = _capbot(argv, url, tmp_path)
        assert done.returncode == 2, (args, done.stderr)
        assert done.stderr.startswith(f"capbot export: {option}: ")
        assert done.stderr.count("\n") == 1
    assert not (tmp_path / "y.zip").exists()
    done = _capbot(["stats", "--json"], url, tmp_path)
    assert done.returncode == 0 and json.loads(done.stdout)["totals"]["submitted"] == 3


async def test_failed_export_leaves_no_file(app: App, tmp_path: Path, monkeypatch):
    await three_reports(app)

    def boom(*args: Any, **kwargs: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(csvfiles, "_write_batch", boom)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "answers.csv").write_text("previous complete export")
    for out in (tmp_path / "x.zip", tmp_path / "d"):
        with pytest.raises(OSError):
            await export_files(app, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "capbot.db", "capbot.db-shm", "capbot.db-wal", "capbot.db.spool", "d"]
    assert [p.name for p in (tmp_path / "d").iterdir()] == ["answers.csv"]
    assert (tmp_path / "d" / "answers.csv").read_text() == "previous complete export"


async def test_rows_api_and_batches(app: App):
    """The API a chat command uses: rows of one file, header first."""
    await three_reports(app)
    exporter = Exporter(app.questionnaire, app.translations, ExportOptions(lang="fr"),
                        batch_rows=7)  # many small batches: submissions span batch borders
    async with reading_connection(app.db) as conn:
        rows = [row async for row in exporter.rows(conn, "answers")]
        subs = [row async for row in exporter.rows(conn, "submissions")]
        book = [row async for row in exporter.rows(conn, "codebook")]
    assert rows[0] == exporter.header("answers")
    stored = await stored_answers(app)
    assert sorted((r[0], r[1], r[2]) for r in rows[1:]) == sorted(s[:3] for s in stored)
    assert len(subs) == 4 and book[0][0] == "file"
