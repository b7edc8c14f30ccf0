"""`capbot serve` killed with SIGKILL again and again while mail flows: every mail is answered,
and a kill costs at most one duplicate reply (the one in flight when it died)."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path

from testkit.imap import ImapSettings
from testkit.smtp import SmtpCapture
from tests.email.support import settings_for

ROOT = Path(__file__).resolve().parents[2]
MAILS = 60
KILLS = 8


def _serve(env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "bot", "serve"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=log.open("ab"),
                            start_new_session=True)


def _mail(n: int, to: str) -> tuple[bytes, str, str]:
    sender = f"official{n % 20}@ministry{n % 20}.example.org"
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = "Questionnaire"
    msg["Message-ID"] = make_msgid(domain="ministry.example.org")
    msg.set_content(f"Hello, I would like to report on capacity-building activities ({n}).")
    return bytes(msg), sender, msg["Message-ID"]


async def test_kills_while_mail_flows_lose_nothing_and_duplicate_at_most_once_each(
        imap_server: ImapSettings, tmp_path: Path) -> None:
    # A busy MTA (0.15 s a message) keeps a backlog of replies waiting when the kills come.
    smtp_server = SmtpCapture(accept_delay=0.15)
    await smtp_server.start()
    try:
        await _run(imap_server, smtp_server, tmp_path)
    finally:
        await smtp_server.stop()


async def _run(imap_server: ImapSettings, smtp_server: SmtpCapture, tmp_path: Path) -> None:
    db_url = f"sqlite+aiosqlite:///{tmp_path / 'capbot.db'}"
    variables = {f"CAPBOT_{k.upper()}": str(v)
                 for k, v in settings_for(imap_server, smtp_server.port).items()}
    env = {**os.environ, **variables, "CAPBOT_DATABASE_URL": db_url,
           "CAPBOT_LOG_LEVEL": "INFO", "CAPBOT_IMAP_POLL_SECONDS": "1",
           "CAPBOT_OUTBOX_LEASE_SECONDS": "3"}
    log = tmp_path / "serve.log"
    rng = random.Random(8)
    sent_ids: list[str] = []

    def deliver_all() -> None:
        for n in range(MAILS):
            raw, sender, mid = _mail(n, imap_server.address)
            imap_server.server.deliver([imap_server.address], raw, sender)
            sent_ids.append(mid)
            time.sleep(0.03)

    delivering = asyncio.create_task(asyncio.to_thread(deliver_all))
    for _ in range(KILLS):
        process = _serve(env, log)
        await asyncio.sleep(rng.uniform(1.8, 3.0))  # start-up ~1.5 s, then some work
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)
    await delivering
    survivor = _serve(env, log)
    try:
        deadline = time.monotonic() + 90
        while len({m.message["In-Reply-To"] for m in smtp_server.messages}) < MAILS:
            assert time.monotonic() < deadline, (
                f"{len(smtp_server.messages)} replies so far\n" + log.read_text()[-3000:])
            await asyncio.sleep(0.2)
        await asyncio.sleep(4)  # anything still to come (a lease running out) is a duplicate
    finally:
        survivor.send_signal(signal.SIGTERM)
        assert survivor.wait(30) == 0, log.read_text()[-3000:]
    answered = [m.message["In-Reply-To"] for m in smtp_server.messages]
    duplicates = len(answered) - len(set(answered))
    print(f"\n{MAILS} mails, {KILLS} kills: {duplicates} duplicate replies")
    assert set(answered) == set(sent_ids)  # every mail answered
    assert duplicates <= KILLS
