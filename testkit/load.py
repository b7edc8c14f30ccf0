"""A load of Telegram and email respondents on a real `capbot serve` (SQLite), sustained, as a
deadline-day burst, or with one chat flooding; what it measured and what it checked.

The serve process is `python -m bot serve` (testkit.kill_probe.Bot); this process runs the Bot
API fake with the Telegram respondents, the SMTP capture, and appends the email respondents'
mail to Dovecot's INBOX over IMAP. Each respondent goes through the whole questionnaire at a
human pace (a random think time between a reply and its next action), so the load holds for
the run's duration; in a burst everyone starts in the first half of the window and submits in
the second.

Latency: Telegram, from the update queued at the fake (Telegram has it) until the reply that
ends the turn arrived at the fake (the next question, the ticked option, the receipt); email,
from the APPEND's completion until the reply reached the SMTP capture.

Used by benchmarks/load_bench.py (full size, figures) and tests/test_load.py (reduced, checks).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import re
import sqlite3
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path

from testkit.fake_bot_api import ChatMessage, FakeBotApi, SimulatedUser
from testkit.imap import ImapSettings
from testkit.kill_probe import REPO_ROOT, Bot
from testkit.smtp import SmtpCapture

SELECTED = "✅"
# One respondent's whole questionnaire on Telegram, one activity (as benchmarks/telegram_bench):
# (kind, value); "toggle" presses a multi-choice option (the question is edited in place).
TELEGRAM_SCRIPT: list[tuple[str, str]] = [
    ("command", "/start"),
    ("choice", "en"),
    ("text", "Maria Lopez"),
    ("text", "maria@example.org"),
    ("text", "Ministry of Environment"),
    ("choice", "PARTY_GOV"),
    ("text", "KE"),
    ("choice", "YES"),
    ("text", "Workshop on risk assessment"),
    ("choice", "PROJECT"),
    ("toggle", "IMPLEMENTING"),
    ("toggle", "FUNDING"),
    ("choice", "DONE"),
    ("choice", "NATIONAL"),
    ("text", "KE, UG"),
    ("choice", "COMPLETED"),
    ("text", "2023-05"),
    ("text", "2023-11"),
    ("text", "3, 4"),
    ("toggle", "TRAINING_WORKSHOP"),
    ("choice", "DONE"),
    ("command", "/skip"),
    ("text", "25"),
    ("text", "2, 3"),
    ("text", "15000 USD"),
    ("text", "Trained 25 risk assessors."),
    ("command", "/skip"),
    ("choice", "NO"),
    ("choice", "YES"),
    ("choice", "YES_SOME"),
    ("text", "1, 3"),
    ("command", "/skip"),
    ("command", "/skip"),
    ("choice", "YES"),
    ("choice", "YES"),
    ("command", "/skip"),
    ("choice", "SUBMIT"),
]
# One respondent's questionnaire by email: a first mail (the form comes back), two replies
# with answers, the submit word (the receipt comes back).
EMAIL_SCRIPT: list[str] = [
    "Hello, I would like to answer the capacity-building questionnaire.",
    "1. Amina Diallo {n}\n2. amina{n}@example.org\n3. Green Action {n}\n4. 5",
    "7. No\n29. No\n30. 3\n39. Yes",
    "SUBMIT",
]
FIRST_CHAT = 5_000_000
FLOODER = 4_999_999
BOT_ADDRESS_RE = re.compile(r"official(\d+)@")
LOG_LEVEL_RE = re.compile(r"^\S+ \S+ (ERROR|CRITICAL|WARNING) ")


@dataclass
class LoadConfig:
    telegram: int = 1000
    email: int = 500
    seconds: float = 600.0
    burst: bool = False  # everyone starts in the first half, submits in the second
    flood_rate: float = 0.0  # one more chat sending this many messages a second (0: none)
    telegram_limits: bool = False  # the fake answers 429 past 30/s and 1/s per chat
    # CAPBOT_TELEGRAM_INBOUND_LIMIT (None: capbot's default, 30 updates a minute per chat; a
    # run so short that a respondent answers faster than that needs more)
    inbound_limit: int | None = None
    sample_every: float = 60.0  # RSS of the serve process
    reply_timeout: float = 180.0  # a respondent gives up after this long without a reply
    drain_timeout: float = 120.0
    seed: int = 1
    code_dir: Path = REPO_ROOT  # the capbot that `capbot serve` runs (PYTHONPATH)
    progress: bool = False  # a line on stderr at each RSS sample

    def pace(self, steps: int) -> tuple[float, float]:
        """(start within, mean think time) in seconds for a script of `steps` actions."""
        if self.burst:
            half = self.seconds / 2
            return half, 0.9 * half / steps
        think = 0.9 * self.seconds / steps
        return think, think


@dataclass
class LoadResult:
    config: LoadConfig
    wall_s: float = 0.0
    telegram_latencies: list[float] = field(default_factory=list)
    telegram_slowest: list[tuple[float, int, str]] = field(default_factory=list)  # (s, step, at)
    email_latencies: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)  # respondents that did not finish
    telegram_done: int = 0
    email_done: int = 0
    submit_times: list[float] = field(default_factory=list)  # receipt, s since the start
    inbound: Counter = field(default_factory=Counter)  # (channel, status) -> rows
    updates_sent: int = 0
    updates_unstored: int = 0  # queued at the fake, no inbound row
    updates_left: int = 0  # still unconfirmed at the fake at the end
    mails_sent: int = 0
    mails_unstored: int = 0
    mails_left: int = 0  # still in INBOX at the end
    outbox: Counter = field(default_factory=Counter)  # status -> rows
    submitted: int = 0
    answers_per_submission: Counter = field(default_factory=Counter)  # (channel, n) -> subs
    refused_429: int = 0
    get_updates: int = 0  # getUpdates calls the fake answered
    log_levels: Counter = field(default_factory=Counter)  # ERROR/CRITICAL/WARNING lines
    tracebacks: int = 0
    log_samples: list[str] = field(default_factory=list)
    first_traceback: str = ""
    rss_mb: list[tuple[float, float]] = field(default_factory=list)  # (s since start, MB)
    serve_cpu_s: float = 0.0  # CPU time of the serve process during the run
    flood_sent: int = 0
    flood_stored: Counter = field(default_factory=Counter)  # status -> rows
    flood_notices: int = 0
    flood_replies: int = 0
    machine_load: str = ""

    @property
    def errors(self) -> int:
        """Everything that should be zero."""
        unprocessed = sum(
            n
            for (ch, status), n in self.inbound.items()
            if status != "processed"
            and not (ch == "telegram" and status == "throttled" and self.config.flood_rate)
        )
        return (
            len(self.failures)
            + self.updates_unstored
            + self.updates_left
            + self.mails_unstored
            + self.mails_left
            + unprocessed
            + sum(n for s, n in self.outbox.items() if s not in ("sent", "coalesced"))
            + self.refused_429
            + self.log_levels["ERROR"]
            + self.log_levels["CRITICAL"]
            + self.tracebacks
        )


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100), nearest rank; nan for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


# --- Telegram ----------------------------------------------------------------------------------


def _button(user: SimulatedUser, code: str) -> tuple[ChatMessage, str]:
    for message in reversed(user.messages):
        for button in message.buttons:
            if button.get("callback_data", "").endswith(f"|{code}"):
                return message, button["callback_data"]
    raise LookupError(f"no button {code}")


def _is_prompt(message: ChatMessage) -> bool:
    """The message that ends a turn: a keyboard, a question (progress in italics), a receipt."""
    if message.reply_markup:
        return True
    entities = message.data.get("entities") or []
    if entities and entities[0]["type"] == "italic" and entities[0]["offset"] == 0:
        return True
    return "CB-" in (message.text or "")


class Run:
    """One load run: the respondents, the flooder, the samplers; `await Run(...).go()`."""

    def __init__(self, config: LoadConfig, imap: ImapSettings, workdir: Path) -> None:
        self.config, self.imap, self.workdir = config, imap, workdir
        self.result = LoadResult(config)
        self.rng = random.Random(config.seed)
        self.started = 0.0
        self.api: FakeBotApi | None = None
        self.bot: Bot | None = None
        self.smtp: SmtpCapture | None = None
        self.inboxes: dict[str, asyncio.Queue[tuple[float, EmailMessage]]] = {}
        self.message_ids: list[str] = []
        self.flooder: SimulatedUser | None = None
        self.flood_ids: list[int] = []

    # Telegram respondents

    async def _telegram(self, user: SimulatedUser) -> None:
        start_within, think = self.config.pace(len(TELEGRAM_SCRIPT))
        rng = random.Random(user.id)
        await asyncio.sleep(rng.uniform(0, start_within))
        timeout = self.config.reply_timeout
        for step, (kind, value) in enumerate(TELEGRAM_SCRIPT):
            if step:
                await asyncio.sleep(think * rng.uniform(0.5, 1.5))
            try:
                if kind in ("choice", "toggle"):
                    message, data = _button(user, value)
                    user.press(data, message)
                elif kind == "command":
                    user.send_command(value)
                else:
                    user.send_text(value)
                sent = time.perf_counter()
                if kind == "toggle":

                    def ticked(message: ChatMessage = message, data: str = data) -> bool:
                        found = message.button(data)
                        return bool(found and found["text"].startswith(SELECTED))

                    await user.wait_for(ticked, timeout=timeout)
                else:
                    await user.wait_for_message(_is_prompt, timeout=timeout)
            except (LookupError, TimeoutError) as exc:
                self.result.failures.append(
                    f"telegram {user.id} at step {step} {kind} {value}: {type(exc).__name__} {exc}"
                )
                return
            latency = time.perf_counter() - sent
            self.result.telegram_latencies.append(latency)
            if latency > 0.25:
                self.result.telegram_slowest.append((latency, step, f"{sent - self.started:.1f}"))
        if "CB-" not in (user.last_message.text if user.last_message else ""):
            self.result.failures.append(f"telegram {user.id}: no receipt")
            return
        self.result.telegram_done += 1
        self.result.submit_times.append(time.perf_counter() - self.started)

    async def _flood(self) -> None:
        """One chat sending `flood_rate` messages a second through the middle 80 % of the run."""
        assert self.flooder is not None and self.api is not None
        await asyncio.sleep(0.1 * self.config.seconds)
        until = time.perf_counter() + 0.8 * self.config.seconds
        tick, owed, n = 0.05, 0.0, 0
        while time.perf_counter() < until:
            owed += self.config.flood_rate * tick
            while owed >= 1:
                self.flooder.send_text(f"flood {n}")
                self.flood_ids.append(self.api.update_log[-1]["update_id"])
                owed -= 1
                n += 1
            await asyncio.sleep(tick)
        self.result.flood_sent = n

    # email respondents

    async def _collect_mail(self) -> None:
        """Hand each mail the SMTP capture got to its recipient's queue, stamped on arrival."""
        assert self.smtp is not None
        seen = 0
        while True:
            while seen < len(self.smtp.messages):
                captured = self.smtp.messages[seen]
                seen += 1
                now = time.perf_counter()
                for rcpt in captured.rcpt_tos:
                    queue = self.inboxes.get(rcpt.lower())
                    if queue is not None:
                        queue.put_nowait((now, captured.message))
            await asyncio.sleep(0.01)

    def _compose(self, n: int, address: str, body: str, last: EmailMessage | None) -> bytes:
        msg = EmailMessage()
        msg["From"] = f"Official {n} <{address}>"
        msg["Subject"] = "Capacity-building report"
        msg["To"] = self.imap.address
        if last is not None:
            msg.replace_header("Subject", "Re: " + str(last["Subject"]))
            msg.replace_header("To", str(last["Reply-To"]))
            msg["In-Reply-To"] = str(last["Message-ID"])
            msg["References"] = str(last["Message-ID"])
            if body != "SUBMIT":
                text = last.get_body(("plain",)).get_content().replace("\r\n", "\n")
                quoted = "\n".join("> " + line for line in text.splitlines())
                body = (
                    f"{body}\n\nOn Mon, 3 Mar 2025 at 10:00, Capacity Bot "
                    f"<{self.imap.address}> wrote:\n{quoted}"
                )
        msg["Message-ID"] = make_msgid(domain=address.split("@")[1])
        msg["Content-Language"] = "en"
        msg.set_content(body)
        self.message_ids.append(str(msg["Message-ID"]).strip("<>"))
        return bytes(msg)

    async def _email(self, n: int) -> None:
        start_within, think = self.config.pace(len(EMAIL_SCRIPT))
        rng = random.Random(-n - 1)
        address = f"official{n}@ministry{n}.example.org"
        inbox = self.inboxes[address] = asyncio.Queue()
        await asyncio.sleep(rng.uniform(0, start_within))
        last: EmailMessage | None = None
        for step, body in enumerate(EMAIL_SCRIPT):
            if step:
                await asyncio.sleep(think * rng.uniform(0.5, 1.5))
            raw = self._compose(n, address, body.format(n=n), last)
            await asyncio.to_thread(self.imap.server.append, None, raw)
            sent = time.perf_counter()
            try:
                arrived, last = await asyncio.wait_for(inbox.get(), self.config.reply_timeout)
            except TimeoutError:
                self.result.failures.append(f"email {n} at step {step}: no reply")
                return
            self.result.email_latencies.append(arrived - sent)
        text = last.get_body(("plain",)).get_content() if last is not None else ""
        if "Reference number" not in text:
            self.result.failures.append(f"email {n}: no receipt: {text[:200]!r}")
            return
        self.result.email_done += 1
        self.result.submit_times.append(time.perf_counter() - self.started)

    # the run

    def _env(self) -> dict[str, str]:
        imap, smtp = self.imap, self.smtp
        assert smtp is not None
        limits = self.config.telegram_limits
        return {
            "CAPBOT_LOG_LEVEL": "INFO",
            "CAPBOT_SPOOL_PATH": str(self.workdir / "spool.jsonl"),
            "CAPBOT_TELEGRAM_RATE_LIMIT": "true" if limits else "false",
            "CAPBOT_TELEGRAM_CHAT_RATE": "1" if limits else "0",
            "CAPBOT_IMAP_HOST": imap.host,
            "CAPBOT_IMAP_PORT": str(imap.port),
            "CAPBOT_IMAP_USER": imap.user,
            "CAPBOT_IMAP_PASSWORD": imap.password,
            "CAPBOT_IMAP_SECURITY": "plain",
            "CAPBOT_IMAP_POLL_SECONDS": "5",
            "CAPBOT_SMTP_HOST": "127.0.0.1",
            "CAPBOT_SMTP_PORT": str(smtp.port),
            "CAPBOT_SMTP_SECURITY": "plain",
            "CAPBOT_EMAIL_FROM": imap.address,
            "CAPBOT_SECRET_KEY": "load-secret",
        } | (
            {}
            if self.config.inbound_limit is None
            else {"CAPBOT_TELEGRAM_INBOUND_LIMIT": str(self.config.inbound_limit)}
        )

    async def _sample(self, pid: int) -> None:
        while True:
            await asyncio.sleep(self.config.sample_every)
            with contextlib.suppress(OSError):
                self.result.rss_mb.append((time.perf_counter() - self.started, rss_mb(pid)))
            if self.config.progress:
                r = self.result
                print(
                    f"  .. {r.rss_mb[-1][0]:4.0f} s: {len(r.telegram_latencies):,} Telegram turns"
                    f" (p99 {1000 * percentile(r.telegram_latencies[-5000:], 99):.0f} ms of the"
                    f" last 5,000), {len(r.email_latencies):,} mails, {len(r.failures)} failed, "
                    f"RSS {r.rss_mb[-1][1]:.0f} MB",
                    file=sys.stderr,
                    flush=True,
                )

    async def _trim(self) -> None:
        """Count the fake's 429s and forget its recorded requests (they would pile up)."""
        assert self.api is not None
        while True:
            await asyncio.sleep(5)
            self._count_requests()

    def _count_requests(self) -> None:
        assert self.api is not None
        requests, self.api.requests[:] = list(self.api.requests), []
        self.result.refused_429 += sum(1 for r in requests if r.status == 429)
        self.result.get_updates += sum(1 for r in requests if r.method == "getUpdates")
        if self.flooder is not None:
            chat = str(self.flooder.id)
            self.result.flood_replies += sum(
                1
                for r in requests
                if r.method == "sendMessage"
                and r.status == 200
                and str(r.params.get("chat_id")) == chat
            )

    async def _wait_log(self, pattern: str, log: Path, seconds: float = 60) -> None:
        deadline = time.monotonic() + seconds
        while pattern not in await asyncio.to_thread(log.read_text, errors="replace"):
            if time.monotonic() > deadline:
                raise RuntimeError(f"no {pattern!r} in {log} within {seconds:.0f} s")
            await asyncio.sleep(0.1)

    def _outbox_pending(self, db: Path) -> int:
        with contextlib.closing(sqlite3.connect(db, timeout=30)) as conn:
            return conn.execute("SELECT count(*) FROM outbox WHERE status = 'pending'").fetchone()[
                0
            ]

    async def _drain(self, db: Path) -> None:
        assert self.api is not None
        deadline = time.monotonic() + self.config.drain_timeout
        while time.monotonic() < deadline:
            left = (
                self.api.pending_updates
                or await asyncio.to_thread(self.imap.server.list_uids)
                or await asyncio.to_thread(self._outbox_pending, db)
            )
            if not left:
                return
            await asyncio.sleep(0.5)

    async def go(self) -> LoadResult:
        config, result = self.config, self.result
        self.smtp = await SmtpCapture().start()
        self.api = FakeBotApi(telegram_limits=config.telegram_limits)
        await self.api.start()
        collector = asyncio.create_task(self._collect_mail())
        tasks: list[asyncio.Task] = []
        try:
            self.bot = Bot(self.api, self.workdir, config.code_dir, self._env())
            await self.bot.start()
            log = self.workdir / f"serve-{self.bot.runs}.log"
            if config.email:
                await self._wait_log("IMAP connected", log)
            assert self.bot.proc is not None
            pid = self.bot.proc.pid
            users = [
                self.api.user(FIRST_CHAT + n, f"User{n}", language_code="en")
                for n in range(config.telegram)
            ]
            if config.flood_rate:
                self.flooder = self.api.user(FLOODER, "Flooder", language_code="en")
            self.started = time.perf_counter()
            result.rss_mb.append((0.0, rss_mb(pid)))
            cpu = cpu_seconds(pid)
            helpers = [asyncio.create_task(self._sample(pid)), asyncio.create_task(self._trim())]
            tasks = [asyncio.create_task(self._telegram(u)) for u in users]
            tasks += [asyncio.create_task(self._email(n)) for n in range(config.email)]
            if self.flooder is not None:
                tasks.append(asyncio.create_task(self._flood()))
            await asyncio.gather(*tasks)
            await self._drain(self.bot.db_path)
            result.wall_s = time.perf_counter() - self.started
            result.rss_mb.append((result.wall_s, rss_mb(pid)))
            result.serve_cpu_s = cpu_seconds(pid) - cpu
            for helper in helpers:
                helper.cancel()
            self._count_requests()
            result.updates_left = len(self.api.pending_updates)
            result.mails_left = len(await asyncio.to_thread(self.imap.server.list_uids))
            await self.bot.terminate()
        finally:
            for task in tasks:
                task.cancel()
            collector.cancel()
            if self.bot is not None:
                await self.bot.terminate()
            await self.api.stop()
            await self.smtp.stop()
        self._check(log)
        return result

    def _check(self, log: Path) -> None:
        result, api = self.result, self.api
        assert api is not None and self.bot is not None
        with contextlib.closing(sqlite3.connect(self.bot.db_path)) as conn:
            rows = conn.execute(
                "SELECT channel, channel_message_id, status FROM inbound_messages"
            ).fetchall()
            result.outbox = Counter(s for (s,) in conn.execute("SELECT status FROM outbox"))
            subs = conn.execute(
                "SELECT s.channel, count(a.id) FROM submissions s LEFT JOIN "
                "answers a ON a.submission_id = s.id WHERE s.status = "
                "'submitted' GROUP BY s.id"
            ).fetchall()
        result.inbound = Counter((channel, status) for channel, _, status in rows)
        result.submitted = len(subs)
        result.answers_per_submission = Counter(subs)
        bot_id = api.bot_user["id"]
        stored = {mid: status for channel, mid, status in rows}
        sent = [f"{bot_id}:{u['update_id']}" for u in api.update_log]
        result.updates_sent = len(sent)
        result.updates_unstored = sum(1 for key in sent if key not in stored)
        email_ids = {mid.strip("<>") for channel, mid, _ in rows if channel == "email"}
        result.mails_sent = len(self.message_ids)
        result.mails_unstored = sum(1 for mid in self.message_ids if mid not in email_ids)
        result.flood_stored = Counter(
            stored.get(f"{bot_id}:{u}", "missing") for u in self.flood_ids
        )
        if self.flooder is not None:
            notice = "You are sending messages faster than I can answer them"
            result.flood_notices = sum(
                1 for m in self.flooder.messages if notice in (m.text or "")
            )
        lines = log.read_text(errors="replace").splitlines()
        for n, line in enumerate(lines):
            if line.startswith("Traceback"):
                result.tracebacks += 1
                if not result.first_traceback:
                    result.first_traceback = "\n".join(lines[max(0, n - 1) : n + 40])
            if (match := LOG_LEVEL_RE.match(line)) is not None:
                result.log_levels[match.group(1)] += 1
                if match.group(1) != "WARNING" or len(result.log_samples) < 10:
                    result.log_samples.append(line[:300])


async def run_load(config: LoadConfig, imap: ImapSettings, workdir: Path) -> LoadResult:
    """One run in `workdir` (the SQLite file, the serve log); Dovecot's mailboxes emptied."""
    await asyncio.to_thread(workdir.mkdir, parents=True, exist_ok=True)
    await asyncio.to_thread(imap.server.reset)
    return await Run(config, imap, workdir).go()
