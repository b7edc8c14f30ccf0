"""Crash probe with both channels: SIGKILL a real `capbot serve` at random moments while Telegram
respondents go through the questionnaire and mail comes in, restart it, count what was lost or
doubled.

One `capbot serve` subprocess (SQLite, Telegram long polling against the Bot API fake in this
process, IMAP from a Dovecot the caller started, SMTP to an aiosmtpd capture that takes 0.1 s a
message, like a busy MTA) is killed with SIGKILL `kills` times, each after a random uptime once
it polls; a last run then finishes the work. Respondents (testkit/respondents.py) start spread
over the kill phase and think a moment before each answer; mails arrive spread over it too.

Measured (MixedKillsResult): updates sent, acknowledged (confirmed by a getUpdates offset) and
stored; mails delivered, stored and answered; submissions and answer rows written twice;
replies sent twice (Telegram: messages beyond the usual count of a chat that ran the same
script; email: a second reply to one Message-ID) against the outbox rows in flight at the kills
(claimed by the killed process, not marked sent: the most a kill can send again).

Used by tests/test_mixed_kills.py (4 kills; CAPBOT_FULL_FAULT_TEST=1: 20) and
benchmarks/mixed_kills.py (figures).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path

from testkit.fake_bot_api import FakeBotApi
from testkit.imap import ImapSettings
from testkit.respondents import Respondent, duplicate_sends
from testkit.smtp import SmtpCapture

REPO_ROOT = Path(__file__).resolve().parents[1]
KILL_CYCLE = 4.0  # seconds a kill cycle takes, about: start-up ~2 s, then 1-2.5 s of work


@dataclass
class MixedKillsResult:
    kills: int
    respondents: int
    updates_sent: int = 0
    updates_acknowledged: int = 0
    acknowledged_not_stored: list[str] = field(default_factory=list)
    updates_not_stored: list[str] = field(default_factory=list)
    inbound_twice: int = 0  # inbound rows (either channel) for one message id
    not_processed: dict[str, int] = field(default_factory=dict)  # inbound status -> count
    submitted: int = 0
    answers_per_submission: list[int] = field(default_factory=list)
    answer_rows_twice: int = 0
    mails: int = 0
    mails_stored: int = 0
    mails_unanswered: int = 0
    telegram_messages_per_chat: int = 0
    telegram_duplicates: int = 0
    email_duplicates: int = 0
    in_flight_at_kills: int = 0
    outbox: dict[str, int] = field(default_factory=dict)  # status -> rows, at the end
    seconds: float = 0.0
    failure: str | None = None  # a respondent stuck, the bot not starting…

    @property
    def duplicates(self) -> int:
        return self.telegram_duplicates + self.email_duplicates

    def summary(self) -> str:
        return (
            f"{self.kills} SIGKILLs, {self.respondents} Telegram respondents: "
            f"{self.updates_sent} updates ({self.updates_acknowledged} acknowledged, "
            f"{len(self.acknowledged_not_stored)} of those not stored, "
            f"{len(self.updates_not_stored)} not stored in all), {self.submitted} submitted; "
            f"{self.mails} mails ({self.mails_stored} stored, {self.mails_unanswered} "
            f"unanswered); inbound twice {self.inbound_twice}, answer rows twice "
            f"{self.answer_rows_twice}; duplicate replies {self.duplicates} (Telegram "
            f"{self.telegram_duplicates}, email {self.email_duplicates}) for "
            f"{self.in_flight_at_kills} rows in flight at the kills; outbox {self.outbox}; "
            f"{self.seconds:.1f} s" + (f"; FAILURE: {self.failure}" if self.failure else "")
        )


def make_mail(n: int, to: str) -> tuple[bytes, str, str]:
    sender = f"official{n}@ministry{n}.example.org"
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = "Capacity-building report"
    msg["Message-ID"] = make_msgid(domain=f"ministry{n}.example.org")
    msg.set_content(f"Hello, I would like to report on our capacity-building activities ({n}).")
    return bytes(msg), sender, msg["Message-ID"]


def _query(db: Path, sql: str, *args: object) -> list[tuple]:
    with contextlib.closing(sqlite3.connect(db, timeout=30)) as conn:
        return conn.execute(sql, args).fetchall()


def serve_env(
    api: FakeBotApi,
    imap: ImapSettings,
    smtp_port: int,
    database_url: str,
    code_dir: Path = REPO_ROOT,
) -> dict[str, str]:
    """The environment of a `capbot serve` on both channels, with short leases and sweeps."""
    return {
        **os.environ,
        "PYTHONPATH": str(code_dir),
        "CAPBOT_DATABASE_URL": database_url,
        "CAPBOT_LOG_LEVEL": "INFO",
        "CAPBOT_TELEGRAM_TOKEN": api.token,
        "CAPBOT_TELEGRAM_API_URL": api.base_url,
        "CAPBOT_TELEGRAM_RATE_LIMIT": "false",
        "CAPBOT_TELEGRAM_CHAT_RATE": "0",
        "CAPBOT_TELEGRAM_INBOUND_LIMIT": "0",
        "CAPBOT_IMAP_HOST": imap.host,
        "CAPBOT_IMAP_PORT": str(imap.port),
        "CAPBOT_IMAP_USER": imap.user,
        "CAPBOT_IMAP_PASSWORD": imap.password,
        "CAPBOT_IMAP_SECURITY": "plain",
        "CAPBOT_IMAP_POLL_SECONDS": "1",
        "CAPBOT_SMTP_HOST": "127.0.0.1",
        "CAPBOT_SMTP_PORT": str(smtp_port),
        "CAPBOT_SMTP_SECURITY": "plain",
        "CAPBOT_EMAIL_FROM": imap.address,
        "CAPBOT_SECRET_KEY": "test-secret",
        "CAPBOT_EMAIL_DAILY_REPLY_CAP": "1000",
        "CAPBOT_EMAIL_UNVERIFIED_REPLY_CAP": "1000",
        "CAPBOT_OUTBOX_LEASE_SECONDS": "3",
        "CAPBOT_OUTBOX_SWEEP_SECONDS": "1",
    }


class ServeProcess:
    """`python -m bot serve` in its own process group, its output in `workdir`/serve.log."""

    def __init__(self, api: FakeBotApi, env: dict[str, str], workdir: Path) -> None:
        self.api, self.env, self.workdir = api, env, workdir
        self.log = workdir / "serve.log"
        self.proc: subprocess.Popen | None = None

    def _spawn(self) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "bot", "serve"],
            cwd=self.workdir,
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=self.log.open("ab"),
            start_new_session=True,
        )

    async def start(self) -> None:
        polls = len(self.api.calls("getUpdates"))
        self.proc = self._spawn()
        deadline = time.monotonic() + 90
        while len(self.api.calls("getUpdates")) <= polls:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"capbot serve did not start:\n{self.tail()}")
            await asyncio.sleep(0.02)

    def kill(self) -> int:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        return self.proc.pid

    def terminate(self) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            return self.proc.wait(10)

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""


async def run_mixed_kills(
    workdir: Path,
    imap: ImapSettings,
    *,
    kills: int = 4,
    respondents: int = 20,
    mails: int = 20,
    seed: int = 13,
    uptime: tuple[float, float] = (1.0, 2.5),
    think: float = 0.25,
    wait: float = 90.0,
    code_dir: Path = REPO_ROOT,
) -> MixedKillsResult:
    started = time.monotonic()
    rng = random.Random(seed)
    result = MixedKillsResult(kills, respondents, mails=mails)
    smtp = SmtpCapture(accept_delay=0.1)
    await smtp.start()
    api = FakeBotApi()
    await api.start()
    db = workdir / "capbot.db"
    env = serve_env(api, imap, smtp.port, f"sqlite+aiosqlite:///{db}", code_dir)
    serve = ServeProcess(api, env, workdir)
    phase = kills * KILL_CYCLE  # the respondents and the mail start spread over it
    users = [api.user(830_000 + n, language_code="en") for n in range(respondents)]
    mail_ids: list[str] = []

    async def respondent(n: int) -> None:
        await asyncio.sleep(phase * n / max(1, respondents))
        person = Respondent(api, users[n], wait=wait, think=think, seed=seed * 1000 + n)
        await person.run()

    def deliver_mail() -> None:
        for n in range(mails):
            time.sleep(phase / max(1, mails))
            raw, sender, mid = make_mail(n, imap.address)
            imap.server.deliver([imap.address], raw, sender)
            mail_ids.append(mid)

    runs: list[asyncio.Task] = []
    try:
        await serve.start()  # migrated and polling before anyone writes
        runs = [asyncio.create_task(respondent(n)) for n in range(respondents)]
        delivering = asyncio.create_task(asyncio.to_thread(deliver_mail))
        for _ in range(kills):
            await asyncio.sleep(rng.uniform(*uptime))
            pid = serve.kill()
            result.in_flight_at_kills += _query(
                db,
                "SELECT count(*) FROM outbox WHERE status = 'pending' AND lease_owner LIKE ?",
                f"%:{pid}:%",
            )[0][0]
            await serve.start()
        await delivering
        try:
            await asyncio.wait_for(asyncio.gather(*runs), wait * 3)
            deadline = time.monotonic() + wait
            while {m.message["In-Reply-To"] for m in smtp.messages} < set(mail_ids):
                if time.monotonic() > deadline:
                    raise AssertionError("mails still unanswered")
                await asyncio.sleep(0.2)
        except (AssertionError, TimeoutError) as exc:
            result.failure = f"{exc}\n--- serve.log\n{serve.tail()}"
        await asyncio.sleep(4)  # a lease running out now would show as a duplicate
        code = serve.terminate()
        if code not in (0, None) and result.failure is None:
            result.failure = f"capbot serve exited {code}\n{serve.tail()}"
    finally:
        for task in runs:
            task.cancel()
        await asyncio.gather(*runs, return_exceptions=True)
        serve.terminate()
        await api.stop()
        await smtp.stop()
    result.seconds = time.monotonic() - started

    bot_id = api.bot_user["id"]
    sent = [f"{bot_id}:{u['update_id']}" for u in api.update_log]
    acknowledged = {f"{bot_id}:{u}" for u in api.confirmed}
    inbound = Counter(
        r[0]
        for r in _query(db, "SELECT channel || '/' || channel_message_id FROM inbound_messages")
    )
    stored_updates = {key.split("/", 1)[1] for key in inbound if key.startswith("telegram/")}
    result.updates_sent, result.updates_acknowledged = len(sent), len(acknowledged)
    result.acknowledged_not_stored = sorted(acknowledged - stored_updates)
    result.updates_not_stored = sorted(set(sent) - stored_updates)
    result.inbound_twice = sum(n - 1 for n in inbound.values())
    result.not_processed = dict(
        Counter(
            r[0]
            for r in _query(db, "SELECT status FROM inbound_messages WHERE status != 'processed'")
        )
    )
    result.mails_stored = len({m for m in mail_ids if f"email/{m.strip('<>')}" in inbound})
    per_submission = _query(
        db,
        "SELECT s.id, count(a.id) FROM submissions s LEFT JOIN answers "
        "a ON a.submission_id = s.id WHERE s.status = 'submitted' "
        "GROUP BY s.id",
    )
    result.submitted = len(per_submission)
    result.answers_per_submission = sorted({n for _, n in per_submission})
    result.answer_rows_twice = len(
        _query(
            db,
            "SELECT submission_id, question_id, repeat_index FROM answers "
            "GROUP BY 1, 2, 3 HAVING count(*) > 1",
        )
    )
    result.outbox = dict(Counter(r[0] for r in _query(db, "SELECT status FROM outbox")))
    try:
        result.telegram_messages_per_chat, result.telegram_duplicates = duplicate_sends(api, users)
    except AssertionError as exc:
        result.failure = (result.failure or "") + f"\n{exc}"
    answered = Counter(m.message["In-Reply-To"] for m in smtp.messages)
    result.mails_unanswered = len(set(mail_ids) - set(answered))
    result.email_duplicates = sum(n - 1 for n in answered.values())
    return result
