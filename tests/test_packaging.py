"""The wheel carries the questionnaires and catalogs: `capbot chat` runs from it, elsewhere."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_a_built_wheel_runs_a_conversation_from_another_directory(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                    "--no-build-isolation", str(ROOT), "-w", str(wheels)],
                   check=True, capture_output=True, cwd=tmp_path, timeout=300)
    (wheel,) = wheels.glob("capbot-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for lang in ("ar", "en", "es", "fr", "ru", "zh"):
        assert f"locales/{lang}/ui.yaml" in names
    assert "questionnaires/cpb_cb_survey.yaml" in names
    assert "storage/migrations/versions/0002_outbox_lease.py" in names
    # Test helpers stay out of the wheel (pyproject include list).
    assert not [n for n in names if n.startswith(("testkit/", "tests/", "benchmarks/"))]
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site),
           "CAPBOT_DATABASE_URL": f"sqlite+aiosqlite:///{elsewhere / 'c.db'}"}
    where = subprocess.run([sys.executable, "-c", "import bot, locales; print(bot.__file__,"
                            " locales.__file__)"], env=env, cwd=elsewhere, text=True,
                           capture_output=True, check=True).stdout
    assert str(ROOT) not in where  # the wheel's copy, not the source tree
    done = subprocess.run([sys.executable, "-m", "bot", "chat", "--json", "--user", "u"],
                          input='{"choice": "fr"}\n{"text": "Amina Diallo"}\n', text=True,
                          env=env, cwd=elsewhere, capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr
    out = [json.loads(line) for line in done.stdout.splitlines()]
    assert out[-1] == {"awaiting": "R2_email"}
    assert any(o.get("language") == "fr" and o.get("question") == "R2_email" for o in out)
