"""Secrets never appear in logs, replies or exports (issue 13, abuse): a full run grepped.

tests/test_logging.py checks the redacting filter on the lines that leaked; this runs the
whole service at DEBUG, libraries included (CAPBOT_LOG_LIBRARIES=debug, and SQLAlchemy's
engine and pool loggers at DEBUG: every statement, parameter and row), with a known bot token,
IMAP and SMTP passwords (SMTP with AUTH), secret key and database password (on PostgreSQL,
percent-encoded in CAPBOT_DATABASE_URL): a Telegram conversation through the
real PTB stack and the Bot API fake (polling, and webhook mode with the secret derived from
the token), Bot API 500s and a 429 on the way, admin /stats and /export (the zip), an export
error, an email conversation through Dovecot with a forged token, then `capbot export` in a
subprocess at DEBUG. Everything the run wrote is grepped for each secret, its URL-encoded
forms, its base64 and SMTP AUTH forms: the log handler's output (root logger, configured by
bot.logs.configure_logging as `capbot serve` does), whatever reached the process's stdout and
stderr, every Telegram message, button, callback answer and document the bot sent, every mail
it sent (headers included), the CSV files and the SQLite database.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import re
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest

from bot.config import load_settings
from bot.logs import LIBRARIES, configure_logging
from bot.server import email_channel as build_email_channel
from bot.webhook import webhook_secret
from testkit.dovecot import Dovecot
from testkit.fake_bot_api import FakeBotApi
from testkit.ports import free_port
from testkit.smtp import SmtpCapture
from tests.email.support import Env, Person, settings_for
from tests.telegram.harness import ADMIN, act, press_code, running
from tests.telegram.harness import settings_for as telegram_settings

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*retry_after:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS"),  # loopback
]

TOKEN = "987654321:AAF-sEcReTtOkEnPaRt_0123456789abcdefXYZ"
IMAP_USER = "vault"
IMAP_PASSWORD = "imap!Pa55/w0rd&x"
SMTP_USER = "capbot-mailer"
SMTP_PASSWORD = "smtp#Pa55 w0rd+x"
SECRET_KEY = "hmac-Secret-Key/with+chars=42"
DB_PASSWORD = "pg!Pa55/w0rd@x"  # in the URL percent-encoded (the test cluster trusts loopback)
ROOT = Path(__file__).resolve().parents[1]
LOGGERS = (*LIBRARIES, "sqlalchemy", "bot", "handlers", "reports", "storage")


def forms(secret: str) -> set[str]:
    """The secret as it could be written: as is, URL-encoded, base64."""
    raw = secret.encode()
    found = {
        secret,
        quote(secret),
        quote(secret, safe=""),
        quote_plus(secret),
        base64.b64encode(raw).decode(),
        base64.urlsafe_b64encode(raw).decode(),
        json.dumps(secret)[1:-1],
    }
    return {f for f in found if len(f) >= 8}


def all_forms(*, derived_webhook_secret: str) -> dict[str, set[str]]:
    auth_plain = base64.b64encode(f"\0{SMTP_USER}\0{SMTP_PASSWORD}".encode()).decode()
    return {
        "bot token": forms(TOKEN) | forms(TOKEN.split(":", 1)[1]),
        "IMAP password": forms(IMAP_PASSWORD),
        "SMTP password": forms(SMTP_PASSWORD) | {auth_plain},
        "secret key": forms(SECRET_KEY),
        "webhook secret": forms(derived_webhook_secret),
        "database password": forms(DB_PASSWORD),
    }


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    levels = {name: logging.getLogger(name).level for name in LOGGERS}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, old in levels.items():
        logging.getLogger(name).setLevel(old)


def leaks(haystacks: dict[str, str], secrets: dict[str, set[str]]) -> list[str]:
    return [
        f"{what} ({form!r}) in {where}"
        for where, text in haystacks.items()
        for what, variants in secrets.items()
        for form in variants
        if form in text
    ]


@pytest.mark.parametrize(
    ("mode", "database"), [("polling", "sqlite"), ("webhook", "sqlite"), ("polling", "postgres")]
)
async def test_no_secret_in_logs_replies_or_exports_of_a_full_debug_run(
    make_app,
    sqlite_url: str,
    dovecot: Dovecot,
    tmp_path: Path,
    capfd,
    restore_logging,
    request: pytest.FixtureRequest,
    mode: str,
    database: str,
) -> None:
    if database == "postgres":
        url = request.getfixturevalue("postgres_url")
        user, _, rest = url.partition("@")
        db_url = f"{user}:{quote(DB_PASSWORD, safe='')}@{rest}"
    else:
        db_url = sqlite_url
    dovecot.reset()
    dovecot.add_user(IMAP_USER, IMAP_PASSWORD)
    imap = dovecot.settings(IMAP_USER)
    smtp = SmtpCapture(auth={SMTP_USER: SMTP_PASSWORD}, auth_require_tls=False)
    await smtp.start()
    haystacks: dict[str, str] = {}
    try:
        async with FakeBotApi(token=TOKEN) as api:
            extra = {}
            if mode == "webhook":
                port = free_port()
                extra = {
                    "telegram_webhook_url": f"http://127.0.0.1:{port}/telegram/hook",
                    "telegram_webhook_listen": "127.0.0.1",
                    "telegram_webhook_port": port,
                }
            mail = settings_for(
                imap,
                smtp.port,
                secret_key=SECRET_KEY,
                smtp_user=SMTP_USER,
                smtp_password=SMTP_PASSWORD,
            )
            settings = {**mail, **extra, "log_level": "DEBUG", "log_libraries": "debug"}
            full = load_settings(database_url=db_url, **telegram_settings(api), **settings)
            derived = webhook_secret(full)
            out = io.StringIO()
            configure_logging(full, stream=out)  # what `capbot serve` does
            logging.getLogger("sqlalchemy").setLevel(logging.DEBUG)
            async with running(make_app, db_url, api, **settings) as bot:
                if mode == "webhook":
                    assert api.webhook and api.webhook["secret_token"] == derived
                email_channel = build_email_channel(bot.app)
                await email_channel.start()
                try:
                    await _telegram_conversation(bot, api)
                    await _email_conversation(
                        Env(bot.app, email_channel, dovecot, smtp, imap.address)
                    )
                finally:
                    await email_channel.stop()
            haystacks["log"] = out.getvalue()
            haystacks.update(_telegram_replies(api))
        haystacks.update(_mails_sent(smtp))
    finally:
        await smtp.stop()
    haystacks.update(_cli_export(db_url, tmp_path, mail, derived))
    if database == "sqlite":
        db = Path(sqlite_url.split("///", 1)[1])
        for path in db.parent.glob(db.name + "*"):  # the file, its WAL
            haystacks[f"database {path.name}"] = path.read_bytes().decode("utf-8", "replace")
    captured = capfd.readouterr()
    haystacks["stdout/stderr"] = captured.out + captured.err

    found = leaks(haystacks, all_forms(derived_webhook_secret=derived))
    secrets = all_forms(derived_webhook_secret=derived)
    for line in haystacks["log"].splitlines():  # where, when one is found
        if any(form in line for variants in secrets.values() for form in variants):
            print("LEAK", line[:600])
    assert not found, found
    # The log really is a DEBUG log of every library that talked: the grep means something.
    log = haystacks["log"]
    names = set(re.findall(r"^\S+ \S+ (?:DEBUG|INFO) ([\w.]+):", log, re.MULTILINE))
    # (PTB runs on capbot's aiohttp transport, so httpx is silent; aiosmtplib logs nothing.)
    talked = ("telegram", "aioimaplib", "sqlalchemy", "handlers", "bot")
    for library in (*talked, "aiosqlite") if database == "sqlite" else talked:
        assert any(n == library or n.startswith(library + ".") for n in names), (
            library,
            sorted(names),
        )
    assert "[redacted]" in log  # something secret-shaped was logged, and redacted
    sizes = {where: len(text) for where, text in haystacks.items()}
    print(
        f"\n{mode}, {database}: grepped {sum(sizes.values()):,} characters ({sizes}) for "
        f"{sum(map(len, all_forms(derived_webhook_secret=derived).values()))} forms of 6 "
        f"secrets: 0 found; DEBUG loggers seen: {len(names)}"
    )


async def _telegram_conversation(bot, api: FakeBotApi) -> None:
    user = api.user(7501, "Amina", language_code="en")
    await bot.step(lambda: user.send_command("/start"))
    await bot.step(lambda: press_code(user, "en"))
    for kind, value in [
        ("text", "Amina Diallo"),
        ("text", "amina@example.org"),
        ("text", "Ministry of Environment"),
        ("choice", "PARTY_GOV"),
    ]:
        await bot.step(act(user, kind, value))
    api.fail_method("sendMessage", 500, "Internal Server Error", count=2)  # retried, logged
    await bot.step(lambda: user.send_text("Senegal"))
    api.force_429(1, retry_after=1)
    await bot.step(lambda: user.send_command("/review"))
    await bot.step(lambda: user.send_photo(caption="my report"))  # an error reply
    stale = {
        "id": api.open_callback_query(user),
        "from": user.user_json,
        "message": user.messages[0].data,
        "chat_instance": "1",
        "data": "language|fr",
    }
    await bot.step(lambda: api.enqueue_update({"callback_query": stale}))
    await bot.step(lambda: user.send_command("/export"))  # refused
    admin = api.user(ADMIN, "Secretariat", language_code="en")
    await bot.step(lambda: admin.send_command("/stats"))
    await bot.step(lambda: admin.send_command("/export", "everything"))  # an error reply
    await bot.step(lambda: admin.send_command("/export", "all en"))
    assert admin.last_message.document is not None


async def _email_conversation(env: Env) -> None:
    person = Person(env, "karim@example.net", "Karim")
    await person.write("Hello, I would like to answer the capacity-building questionnaire.")
    await person.answer("1. Karim Haddad\n2. not-an-address\n3. Ministry of Agriculture")
    reply_to = person.last["Reply-To"]
    forged = reply_to.replace("+", "+zz", 1)
    await env.deliver(
        person.compose("1. Someone else", to=forged), to=forged, mail_from=person.address
    )
    await env.reply()  # mail_bad_token
    await env.settle()


def _telegram_replies(api: FakeBotApi) -> dict[str, str]:
    """What the bot sent to chats: texts, keyboards, callback answers, documents."""
    sent = [
        r.params
        for r in api.requests
        if r.method.lower().startswith(("send", "edit", "answer", "setmycommands"))
    ]
    found = {"telegram replies": json.dumps(sent, ensure_ascii=False, default=str)}
    for n, stored in enumerate(api.files.values()):
        if stored.data[:2] == b"PK":
            with zipfile.ZipFile(io.BytesIO(stored.data)) as archive:
                found[f"/export zip {n}"] = "".join(
                    archive.read(name).decode("utf-8-sig", "replace")
                    for name in archive.namelist()
                )
    assert any(k.startswith("/export zip") for k in found)
    return found


def _mails_sent(smtp: SmtpCapture) -> dict[str, str]:
    assert smtp.messages
    return {"mails sent": "\n".join(m.message.as_string() for m in smtp.messages)}


def _cli_export(db_url: str, tmp_path: Path, mail: dict, derived: str) -> dict[str, str]:
    out = tmp_path / "export"
    env = {
        **os.environ,
        "CAPBOT_DATABASE_URL": db_url,
        "CAPBOT_TELEGRAM_TOKEN": TOKEN,
        "CAPBOT_IMAP_PASSWORD": IMAP_PASSWORD,
        "CAPBOT_SMTP_PASSWORD": SMTP_PASSWORD,
        "CAPBOT_SMTP_USER": SMTP_USER,
        "CAPBOT_SECRET_KEY": SECRET_KEY,
        "CAPBOT_IMAP_HOST": mail["imap_host"],
        "CAPBOT_IMAP_USER": IMAP_USER,
        "CAPBOT_SMTP_HOST": mail["smtp_host"],
        "CAPBOT_EMAIL_FROM": mail["email_from"],
        "CAPBOT_LOG_LEVEL": "DEBUG",
        "CAPBOT_LOG_LIBRARIES": "debug",
    }
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bot",
            "export",
            "--out",
            str(out),
            "--status",
            "all",
            "--lang",
            "en",
        ],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    files = {f"export {p.name}": p.read_text(encoding="utf-8-sig") for p in out.iterdir()}
    assert "Amina Diallo" in files["export submissions.csv"]
    assert "Karim Haddad" in files["export submissions.csv"]
    return {"capbot export output": done.stdout + done.stderr, **files}
