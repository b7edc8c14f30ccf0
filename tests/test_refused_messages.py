"""Messages the database refuses: kept in the spool and stored at the next start, or the
respondent is told honestly that nothing was saved; undecodable input is never fatal."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from sqlalchemy import select

from bot.messages import Inbound
from storage.models import inbound_messages
from testkit.disk import small_disk


async def _inbound(app) -> list:
    async with app.db.connect() as conn:
        return list(await conn.execute(select(inbound_messages).order_by(inbound_messages.c.id)))


def _message(n: int) -> Inbound:
    return Inbound("telegram", f"{1000 + n % 7}", f"bot:{50_000 + n}", text=f"answer {n}",
                   raw=f'{{"update_id": {50_000 + n}, "text": "answer {n}"}}')


async def test_a_full_disk_keeps_every_message_in_the_spool_for_the_next_start(make_app
                                                                               ) -> None:
    with small_disk() as disk:
        url = f"sqlite+aiosqlite:///{disk.path / 'capbot.db'}"
        spool = disk.path / "capbot.db.spool"  # beside the database, on the same full disk
        app = await make_app(url, spool_path=spool)
        en = app.translations
        disk.fill()
        results = [await app.service.handle(_message(n), language="en") for n in range(40)]
        assert all(r.failed for r in results)
        await app.close()

        disk.free()
        restarted = await make_app(url, spool_path=spool)
        rows = await _inbound(restarted)
        assert sorted(r.channel_message_id for r in rows) == sorted(
            f"bot:{50_000 + n}" for n in range(40))
        assert all(r.status == "failed" and "spool" in r.reason for r in rows)
        assert rows[0].payload.startswith('{"update_id"')  # the raw payload, verbatim
        assert all(r.kept for r in results)  # so "your message has been kept" was true
        assert {r.replies[0].text for r in results} == {en.t("en", "error_internal")}
        await restarted.close()
        replayed_again = await make_app(url, spool_path=spool)
        assert len(await _inbound(replayed_again)) == 40  # replayed once, not at every start
        await replayed_again.close()


async def test_when_nothing_can_be_kept_the_respondent_is_told_so(make_app) -> None:
    with small_disk() as disk:
        url = f"sqlite+aiosqlite:///{disk.path / 'capbot.db'}"
        app = await make_app(url, spool_path=Path("/proc/capbot-no-such-dir/spool"))
        disk.fill()
        result = await app.service.handle(_message(1), language="fr")
        assert result.failed and not result.kept
        text = result.replies[0].text
        assert text == app.translations.t("fr", "error_not_saved")
        assert text != app.translations.t("fr", "error_internal")
        disk.free()
        await app.close()


async def test_lone_surrogates_are_stored_not_fatal(make_app, sqlite_url) -> None:
    app = await make_app(sqlite_url)
    result = await app.service.handle(Inbound("console", "u1", "console:1", kind="text",
                                              text="Ministry \udcff of \ud800 Health",
                                              raw='{"text": "\udcff"}'))
    assert not result.failed
    [row] = await _inbound(app)
    assert row.status == "processed"
    assert "\ufffd" in row.payload


def test_capbot_chat_reads_bytes_that_are_not_utf8(tmp_path: Path) -> None:
    env = {**os.environ, "CAPBOT_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/c.db",
           "LC_ALL": "C.UTF-8", "PYTHONIOENCODING": "utf-8:strict"}
    stdin = b'{"choice": "en"}\nAmina \xff\xfe Diallo\n\xc3\x28 li@example.org\n'
    done = subprocess.run([sys.executable, "-m", "bot", "chat", "--json", "--user", "u"],
                          input=stdin, capture_output=True, env=env, cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr.decode()
    awaiting = [line for line in done.stdout.decode().splitlines() if '"awaiting"' in line]
    assert len(awaiting) == 4  # /start, the language and both undecodable lines answered
    assert "Traceback" not in done.stderr.decode()
