"""No secret in any log line; third-party libraries stay at INFO when capbot logs at DEBUG."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest
from telegram import Bot

from bot.config import load_settings
from bot.logs import configure_logging
from bot.webhook import webhook_secret

TOKEN = "123456789:AAHx-very_secret-token-0123456789abcdef"
IMAP_PASSWORD = "imap-pa55word!"


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name in ("telegram", "aioimaplib"):
        logging.getLogger(name).setLevel(logging.NOTSET)


def _configure(**settings) -> io.StringIO:
    out = io.StringIO()
    configure_logging(load_settings(telegram_token=TOKEN, imap_password=IMAP_PASSWORD,
                                    log_level="DEBUG", **settings), stream=out)
    return out


@pytest.mark.parametrize("libraries", ["info", "debug"])
def test_the_bot_token_never_reaches_the_log(restore_logging, libraries: str) -> None:
    out = _configure(log_libraries=libraries)
    Bot(TOKEN, base_url="http://127.0.0.1:9/bot")  # PTB logs "Set Bot API URL: …<token>"
    logging.getLogger("telegram.ext.Updater").info("fetching %s", f"/bot{TOKEN}/getUpdates")
    text = out.getvalue()
    assert TOKEN not in text
    assert TOKEN.split(":")[1] not in text
    assert "fetching /bot[redacted]/getUpdates" in text
    assert ("Set Bot API URL" in text) == (libraries == "debug")


def test_the_webhook_secret_derived_from_the_token_is_redacted(restore_logging) -> None:
    """PTB logs setWebhook's parameters at DEBUG; found by tests/test_secrets_in_logs.py."""
    out = _configure(log_libraries="debug")
    secret = webhook_secret(load_settings(telegram_token=TOKEN))
    logging.getLogger("telegram.ext.ExtBot").debug(
        "Calling Bot API endpoint `setWebhook` with parameters `%s`", {"secret_token": secret}
    )
    assert secret not in out.getvalue() and "setWebhook" in out.getvalue()


def test_passwords_are_redacted_in_messages_and_tracebacks(restore_logging) -> None:
    out = _configure()
    log = logging.getLogger("handlers.email.imap")
    try:
        raise ConnectionError(f"LOGIN bot {IMAP_PASSWORD} rejected")
    except ConnectionError:
        log.exception("imap login failed for postgresql://capbot:%s@db/capbot", "dbpw-123")
    log.warning("smtp said: AUTH PLAIN AGJvdABzZWNyZXQ= and password=hunter22")
    text = out.getvalue()
    for secret in (IMAP_PASSWORD, "dbpw-123", "AGJvdABzZWNyZXQ=", "hunter22"):
        assert secret not in text
    assert "postgresql://capbot:[redacted]@db/capbot" in text
    assert "ConnectionError" in text  # the traceback itself is kept


def test_library_debug_lines_stay_out_unless_asked(restore_logging) -> None:
    out = _configure()
    logging.getLogger("aioimaplib.aioimaplib").debug("Received: b'* 1 FETCH (BODY[] {4000}'")
    logging.getLogger("bot.service").debug("our own debug line")
    assert "FETCH" not in out.getvalue()
    assert "our own debug line" in out.getvalue()
    out = _configure(log_libraries="debug")
    logging.getLogger("aioimaplib.aioimaplib").debug("Received: b'* 1 FETCH'")
    assert "FETCH" in out.getvalue()


def test_an_unreachable_database_is_one_line_naming_the_variable(tmp_path) -> None:
    env = {**os.environ,
           "CAPBOT_DATABASE_URL": "postgresql+asyncpg://capbot:pw-42@127.0.0.1:1/capbot"}
    for command in (["chat"], ["serve"], ["stats"]):
        env["CAPBOT_TELEGRAM_TOKEN"] = TOKEN if command == ["serve"] else ""
        done = subprocess.run([sys.executable, "-m", "bot", *command], input="", text=True,
                              capture_output=True, env=env, cwd=tmp_path, timeout=60)
        assert done.returncode == 2, done.stderr
        assert "Traceback" not in done.stderr
        assert done.stderr.startswith("capbot: CAPBOT_DATABASE_URL: cannot connect"), \
            done.stderr
        assert "pw-42" not in done.stderr
