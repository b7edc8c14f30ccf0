"""The database turned read-only under a running service, then writable again (issue 13,
faults). Real parts: PostgreSQL (`ALTER DATABASE … SET default_transaction_read_only = on` and
every session terminated, as a failover onto a standby or an operator would), capbot's Telegram
channel (PTB, long polling) against the Bot API fake.

Checked: while read-only, the service says so in its log, tells nobody that their answer was
recorded (each respondent gets the honest "kept, please try again" note and no next question),
records no answer, and keeps each message in the spool; once writable again (the setting turned
off, *without* terminating the sessions the pool opened meanwhile), the same process takes the
answers again, by itself.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from storage.models import answers
from testkit.fake_bot_api import FakeBotApi
from testkit.postgres import Postgres
from tests.telegram.harness import act, running

pytestmark = pytest.mark.filterwarnings("ignore:.*retry_after:DeprecationWarning")
USERS = 4


def _read_only(postgres: Postgres, name: str, on: bool, *, terminate: bool) -> None:
    postgres.psql(
        f'ALTER DATABASE "{name}" SET default_transaction_read_only = {"on" if on else "off"}'
    )
    if terminate:
        postgres.psql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            f"WHERE datname = '{name}' AND pid <> pg_backend_pid()"
        )


async def test_a_read_only_database_is_told_honestly_kept_and_recovered_from(
    make_app,
    postgres: Postgres,
    postgres_url: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    name = make_url(postgres_url).database
    assert name
    spool = tmp_path / "spool.jsonl"
    async with FakeBotApi() as api, running(make_app, postgres_url, api, spool_path=spool) as bot:
        tr = bot.app.translations
        kept_note = tr.t("en", "error_internal")
        users = [api.user(870_000 + n, language_code="en") for n in range(USERS)]
        for user in users:  # the questionnaire begun: the name asked and answered
            await bot.step(act(user, "text", "/start"))
            await bot.step(act(user, "choice", "en"))
            await bot.step(act(user, "text", "Maria Lopez"))
        before = len(await bot.rows(answers))
        assert before == USERS

        _read_only(postgres, name, True, terminate=True)
        caplog.clear()
        for user in users:
            seen = len(user.messages)
            await bot.step(act(user, "text", "maria@example.org"))
            note = await api.wait_for(lambda u=user, s=seen: u.messages[s:], 20)
            assert [m.text for m in note] == [kept_note]  # kept, not recorded; no question
        assert len(await bot.rows(answers)) == before  # reads still work; nothing written
        assert "in a read-only transaction" in caplog.text  # the log says why
        kept = [json.loads(line) for line in spool.read_bytes().rstrip(b"\0").splitlines()]
        assert len(kept) == USERS and all("read-only" in k["reason"] for k in kept)

        _read_only(postgres, name, False, terminate=False)  # the pool's sessions stay
        for user in users:  # sent again, as the note asked: recorded, the next question
            seen = len(user.messages)
            await bot.step(act(user, "text", "maria@example.org"))
            replies = await api.wait_for(lambda u=user, s=seen: u.messages[s:], 20)
            assert kept_note not in [m.text for m in replies]
            assert any("organization" in (m.text or "").lower() for m in replies), [
                m.text for m in replies
            ]
        assert len(await bot.rows(answers)) == 2 * USERS
