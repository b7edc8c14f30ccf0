"""The command line as a user or a script drives it: chat (text and JSON), serve, tools."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bot.i18n import LANGUAGES

ROOT = Path(__file__).resolve().parent.parent

# One full questionnaire, using only stable choice codes and free text.
SCRIPT = [
    {"text": "Li Wei"}, {"text": "li.wei@example.org"}, {"text": "Ministry of Ecology"},
    {"choice": "PARTY_GOV"}, {"text": "CN"}, {"choice": "YES"}, {"text": "Training"},
    {"choice": "ACTIVITY"}, {"choice": "IMPLEMENTING"}, {"choice": "DONE"},
    {"choice": "GLOBAL"}, {"choice": "ONGOING"}, {"text": "2024-01"}, {"text": "/skip"},
    {"choice": "RISK_ASSESSMENT"}, {"choice": "DETECTION_ID"}, {"choice": "DONE"},
    {"choice": "ELEARNING"}, {"choice": "DONE"}, {"text": "/skip"}, {"text": "40"},
    {"text": "/skip"}, {"text": "/skip"}, {"text": "/skip"}, {"text": "/skip"},
    {"choice": "NO"}, {"choice": "NO"}, {"choice": "NO"}, {"choice": "YES"},
    {"choice": "YES"}, {"text": "/skip"}, {"choice": "SUBMIT"},
]


def capbot(args: list[str], stdin: str, tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "CAPBOT_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/c.db",
                **env}
    return subprocess.run([sys.executable, "-m", "bot", *args], input=stdin, text=True,
                          capture_output=True, env=full_env, cwd=tmp_path, timeout=120)


def lines(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines() if line.strip()]


@pytest.mark.parametrize("lang", LANGUAGES)
def test_json_chat_completes_with_codes_only(tmp_path: Path, lang: str) -> None:
    stdin = "\n".join(json.dumps(item, ensure_ascii=False) for item in
                      [{"choice": lang}, *SCRIPT]) + "\n"
    proc = capbot(["chat", "--json", "--user", "u1"], stdin, tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = lines(proc.stdout)
    awaits = [o["awaiting"] for o in out if "awaiting" in o]
    assert awaits[0] == "language"
    assert len(awaits) == len(SCRIPT) + 2  # the greeting, then one per input line
    assert awaits[-1] == "done"
    receipt = [o for o in out if o.get("kind") == "receipt"]
    assert receipt and receipt[0]["language"] == lang and "CB-" in receipt[0]["text"]
    menu = next(o for o in out if o.get("kind") == "language_menu")
    assert [c["code"] for c in menu["choices"]] == list(LANGUAGES)
    yes_no = next(o for o in out if o.get("question") == "S1_any_activity")
    assert [c["code"] for c in yes_no["choices"]] == ["YES", "NO"] and not yes_no["multi"]
    multi = next(o for o in out if o.get("question") == "A3_role")
    assert multi["multi"] and multi["choices"][-1]["code"] == "DONE"


def test_resume_with_the_same_user(tmp_path: Path) -> None:
    first = capbot(["chat", "--json", "--user", "amina", "--lang", "es"],
                   '{"text": "Amina"}\n', tmp_path)
    assert lines(first.stdout)[-1] == {"awaiting": "R2_email"}
    again = capbot(["chat", "--json", "--user", "amina"], "", tmp_path)
    out = lines(again.stdout)
    assert out[-1] == {"awaiting": "R2_email"}
    assert out[-2]["language"] == "es"


def test_plain_chat_numbers_the_options(tmp_path: Path) -> None:
    proc = capbot(["chat", "--lang", "en", "--user", "p"],
                  "Amina\namina@example.org\nMinistry\n", tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "  1. Government of a Party to the Cartagena Protocol" in proc.stdout
    assert "Part 1 of 5 · About you · question 4 of 5" in proc.stdout


def test_detect_language_prints_json_per_line(tmp_path: Path) -> None:
    proc = capbot(["detect-language"], "Bonjour, je voudrais répondre au questionnaire sur "
                  "le renforcement des capacités\nمرحبا بكم\n\n", tmp_path)
    out = lines(proc.stdout)
    assert [o["language"] for o in out] == ["fr", "ar", None]
    assert out[0]["confident"] is True and out[2]["confident"] is False
    assert out[1]["text"] == "مرحبا بكم"


def test_serve_without_channels_explains_what_to_configure(tmp_path: Path) -> None:
    proc = capbot(["serve"], "", tmp_path)
    assert proc.returncode == 2
    assert "CAPBOT_TELEGRAM_TOKEN" in proc.stderr and "CAPBOT_IMAP_HOST" in proc.stderr


def test_corrupt_questionnaire_stops_start_up_naming_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("id: x\nversion: '1'\ncode_lists: {}\nsections: []\n", encoding="utf-8")
    proc = capbot(["chat", "--json"], "", tmp_path, CAPBOT_QUESTIONNAIRE=str(bad))
    assert proc.returncode == 2
    assert str(bad) in proc.stderr and "sections" in proc.stderr


def test_bad_setting_names_the_variable(tmp_path: Path) -> None:
    proc = capbot(["chat"], "", tmp_path, CAPBOT_TELEGRAM_ADMINS="not-a-number")
    assert proc.returncode == 2 and "CAPBOT_TELEGRAM_ADMINS" in proc.stderr


def test_db_upgrade(tmp_path: Path) -> None:
    proc = capbot(["db", "upgrade"], "", tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "c.db").exists()
