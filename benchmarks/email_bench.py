"""Benchmark: replies by email processed end to end, next to a fetch-and-parse baseline.

Run: python -m benchmarks.email_bench [--messages 500] [--db sqlite|postgres]
Starts a throwaway Dovecot and an SMTP capture (in a child process, so its CPU is not ours),
sends the form to N different people (untimed: their first mails), appends their N replies
(six languages, answers as `N. answer` lines above the quoted form, each sent to the form's
Reply-To with its subject, so carrying the reply token as a mail client's reply does), then
measures in one run:
  baseline   - the same IMAP fetch (UID FETCH BODY.PEEK[] in batches of 100) + parse_message
  end to end - the email channel: fetch, parse, read the answers, commit (SQLite, durable),
               digest rendered and sent to the SMTP server, messages moved to Processed.
Prints messages/s and CPU ms per message for both, and the ratio. The run fails unless every
reply's 14 answers were recorded (a reply without its token is refused as unverified, which
is cheaper and records nothing: until 2026-12-02 this benchmark timed that refusal).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import random
import sys
import tempfile
import time
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from pathlib import Path
from typing import Any

from bot.app import build_app
from bot.config import load_settings
from bot.server import email_channel
from handlers.email.channel import EmailChannel
from handlers.email.imap import ImapConfig, ImapWatcher
from handlers.email.parsing import parse_message
from testkit.dovecot import Dovecot
from testkit.ports import free_port
from testkit.postgres import Postgres

LANGS = {
    "en": (
        "Hello,\n\nPlease find my answers below.",
        "Best regards,",
        "Amina Diallo",
        "Ministry of Environment",
        "On Mon, 3 Mar 2025 at 10:00, Capacity Bot wrote:",
    ),
    "fr": (
        "Bonjour,\n\nVoici mes réponses.",
        "Cordialement,",
        "Marie Dupont",
        "Ministère de l'Environnement",
        "Le lun. 3 mars 2025 à 10:00, Capacity Bot a écrit :",
    ),
    "es": (
        "Hola:\n\nLe envío mis respuestas.",
        "Saludos cordiales,",
        "María López",
        "Ministerio del Ambiente",
        "El lun, 3 mar 2025 a las 10:00, Capacity Bot escribió:",
    ),
    "ru": (
        "Здравствуйте!\n\nНиже мои ответы.",
        "С уважением,",
        "Анна Иванова",
        "Министерство природных ресурсов",
        "пн, 3 мар. 2025 г. в 10:00, Capacity Bot:",
    ),
    "zh": (
        "您好：\n\n以下是我的答复。",
        "此致",
        "王芳",
        "生态环境部",
        "在 2025年3月3日 10:00，Capacity Bot 写道：",
    ),
    "ar": (
        "مرحباً،\n\nإليكم إجاباتي:",
        "مع أطيب التحيات،",
        "أحمد علي",
        "وزارة البيئة",
        "في 3 مارس 2025، كتب Capacity Bot:",
    ),
}


def make_reply(i: int, lang: str, quoted_form: str, form: tuple[str, str] | None = None) -> bytes:
    """A reply to the form: to its Reply-To (bot+TOKEN@) with its subject ([ref:TOKEN]),
    as a mail client writes it; without `form`, a mail to the bot's plain address."""
    hello, bye, name, org, attribution = LANGS[lang]
    answers = [
        f"1. {name} {i}",
        f"2. person{i}@example.net",
        f"3. {org}",
        "4. 1",
        "6. ke",
        "7. 1",
        "8. Workshop on risk assessment",
        "9. 2",
        "10. 1, 3",
        "11. 3",
        "12. ke, ug",
        "13. 4",
        "14. 2023-05",
        "15. 2023-11",
    ]
    random.Random(i).shuffle(answers)
    body = "\n".join(
        [
            hello,
            "",
            *answers,
            "",
            bye,
            name,
            "",
            attribution,
            *("> " + line for line in quoted_form.splitlines()),
        ]
    )
    msg = EmailMessage()
    msg["From"] = f"{name} <person{i}@example.net>"
    reply_to, subject = form or ("bot@example.org", "capacity-building questionnaire")
    msg["To"] = reply_to
    msg["Subject"] = f"Re: {subject}"
    msg["Date"] = format_datetime(time_utc())
    msg["Message-ID"] = make_msgid(domain="example.net")
    msg["Content-Language"] = lang
    msg.set_content(body)
    return bytes(msg)


def time_utc():
    from datetime import UTC, datetime

    return datetime.now(UTC)


# -- the SMTP capture, in its own process ------------------------------------------------------


def _capture(port: int, count: Any, ready: Any, stop: Any, record: Any, forms: Any) -> None:
    from email.parser import BytesHeaderParser
    from email.policy import default

    from aiosmtpd.controller import Controller

    class Handler:
        async def handle_DATA(self, server, session, envelope):
            if record.value:  # the forms' Reply-To and Subject, which replies go back to
                head = BytesHeaderParser(policy=default).parsebytes(envelope.content)
                forms.put(
                    (envelope.rcpt_tos[0], str(head["Reply-To"] or ""), str(head["Subject"] or ""))
                )
            with count.get_lock():
                count.value += 1
            return "250 OK"

    controller = Controller(Handler(), hostname="127.0.0.1", port=port)
    controller.start()
    ready.set()
    stop.wait()
    controller.stop()


class CaptureProcess:
    def __init__(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.port = free_port()
        self.count = ctx.Value("i", 0)
        self.ready, self._stop = ctx.Event(), ctx.Event()
        self.record, self.forms = ctx.Value("b", 1), ctx.Queue()
        self.proc = ctx.Process(
            target=_capture,
            args=(self.port, self.count, self.ready, self._stop, self.record, self.forms),
            daemon=True,
        )
        self.form_of: dict[str, tuple[str, str]] = {}  # address -> (Reply-To, Subject)

    async def collect(self, count: int) -> None:
        """Wait until the forms sent to `count` addresses are known."""

        def drained() -> bool:
            while not self.forms.empty():
                address, reply_to, subject = self.forms.get()
                if reply_to:
                    self.form_of[address] = (reply_to, subject)
            return len(self.form_of) >= count

        await _wait(drained, "forms")

    def __enter__(self) -> CaptureProcess:
        self.proc.start()
        if not self.ready.wait(30):
            raise RuntimeError("SMTP capture did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.proc.join(10)


# -- runs ------------------------------------------------------------------------------------


def _cpu() -> float:
    return time.process_time()


async def baseline(settings, n: int) -> tuple[float, float]:
    """Fetch and parse the same messages with the same IMAP code; nothing else."""
    parsed: list[Any] = []
    # The same warm-up as the end-to-end run gets (one reply per language, parsed).
    forms = _form_texts(settings)
    for k, lang in enumerate(LANGS):
        parse_message(
            make_reply(10_000 + k, lang, forms[lang]), max_bytes=settings.email_max_bytes
        )

    async def handle(batch):
        for fetched in batch:
            parsed.append(parse_message(fetched.raw, max_bytes=settings.email_max_bytes))
        return []  # nothing recorded: nothing moved

    watcher = ImapWatcher(
        ImapConfig(
            host=settings.imap_host,
            port=settings.imap_port,
            user=settings.imap_user,
            password=settings.imap_password,
            security="plain",
            processed_folder="Processed",
            max_bytes=settings.email_max_bytes,
        ),
        handle,
    )
    wall, cpu = time.perf_counter(), _cpu()
    await watcher._connect()
    try:
        uids = [
            int(u)
            for u in (await watcher._client.uid_search("ALL", charset=None)).lines[0].split()
        ]
        for start in range(0, len(uids), 100):
            await handle(await watcher._fetch(uids[start : start + 100]))
    finally:
        await watcher._disconnect()
    wall, cpu = time.perf_counter() - wall, _cpu() - cpu
    assert len(parsed) == n, len(parsed)
    return wall, cpu


async def prepare(settings, n: int, capture: CaptureProcess) -> tuple[Any, EmailChannel]:
    """Untimed: each respondent's first mail and the form sent back, so that the timed mails
    are replies to a form carrying its reply token, as in real use (and start-up costs stay
    out of the figures). Without the token a reply would be refused as unverified (From is
    easy to forge) and record nothing."""
    app = await build_app(settings)
    channel = email_channel(app)
    app.service.on_outbox(channel.dispatcher.enqueue)
    await channel.dispatcher.start()
    langs = list(LANGS)
    for i in range(n):
        await channel.process_raw(make_first(i, langs[i % len(langs)]))
    # Warm-up, as in a service that has been running: one reply per language builds the
    # lazily made caches (country names, option labels, rendered questions).
    forms = _form_texts(settings)
    for k, lang in enumerate(LANGS):
        await channel.process_raw(make_first(10_000 + k, lang))
    await capture.collect(n + len(LANGS))
    for k, lang in enumerate(LANGS):
        form = capture.form_of[f"person{10_000 + k}@example.net"]
        await channel.process_raw(make_reply(10_000 + k, lang, forms[lang], form))
    await _wait(lambda: capture.count.value >= n + 2 * len(LANGS), "forms")
    capture.record.value = 0
    return app, channel


async def end_to_end(
    app,
    channel: EmailChannel,
    n: int,
    capture: CaptureProcess,
    dovecot: Dovecot,
    profile: str | None = None,
) -> tuple[float, float]:
    channel.processed = 0
    sent_before = capture.count.value
    answers_before = await _count_answers(app)
    profiler = None
    if profile:  # the event loop thread only: turns run in the database writer thread
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    wall, cpu = time.perf_counter(), _cpu()
    channel.watcher.start()
    try:
        await _wait(
            lambda: capture.count.value - sent_before >= n and channel.processed >= n, "digests"
        )
        wall, cpu = time.perf_counter() - wall, _cpu() - cpu
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(profile)
        # The replies were answers, not refusals: 14 recorded per reply.
        recorded = await _count_answers(app) - answers_before
        if recorded < 14 * n:
            raise RuntimeError(f"only {recorded} answers recorded for {n} replies")
    finally:
        await channel.stop()
        await app.close()
    left = dovecot.list_uids(None)
    if left:
        raise RuntimeError(f"{len(left)} messages left in INBOX")
    return wall, cpu


async def _count_answers(app) -> int:
    from sqlalchemy import func, select

    from storage.models import answers

    async with app.database.engine.connect() as conn:
        return (await conn.execute(select(func.count()).select_from(answers))).scalar_one()


async def _wait(done, what: str, seconds: float = 600) -> None:
    deadline = time.monotonic() + seconds
    while not done():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not done after {seconds} s")
        await asyncio.sleep(0.005)


def make_first(i: int, lang: str) -> bytes:
    hello, _, name, _, _ = LANGS[lang]
    msg = EmailMessage()
    msg["From"] = f"{name} <person{i}@example.net>"
    msg["To"] = "bot@example.org"
    msg["Subject"] = "Questionnaire"
    msg["Message-ID"] = make_msgid(domain="example.net")
    msg["Content-Language"] = lang
    msg.set_content(hello)
    return bytes(msg)


async def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--messages", type=int, default=500)
    p.add_argument("--db", choices=("sqlite", "postgres"), default="sqlite")
    p.add_argument("--profile", metavar="FILE", help="cProfile stats of the timed run")
    args = p.parse_args(argv)
    n = args.messages
    tmp = Path(tempfile.mkdtemp(prefix="capbot-email-bench-"))
    with Dovecot() as dovecot, CaptureProcess() as capture:
        postgres = None
        if args.db == "postgres":
            postgres = Postgres().start()
            url = postgres.create_database("bench")
        else:
            url = f"sqlite+aiosqlite:///{tmp / 'bench.db'}"
        try:
            settings = load_settings(
                database_url=url,
                imap_host=dovecot.host,
                imap_port=dovecot.imap_port,
                imap_user=dovecot.bot_user,
                imap_password=dovecot.password,
                imap_security="plain",
                smtp_host="127.0.0.1",
                smtp_port=capture.port,
                smtp_security="plain",
                email_from="bot@example.org",
                secret_key="bench-secret",
                email_daily_reply_cap=1000,
            )
            forms = _form_texts(settings)
            langs = list(LANGS)
            app, channel = await prepare(settings, n, capture)
            messages = [
                make_reply(
                    i,
                    langs[i % len(langs)],
                    forms[langs[i % len(langs)]],
                    capture.form_of[f"person{i}@example.net"],
                )
                for i in range(n)
            ]
            t0 = time.perf_counter()
            dovecot.append_many(None, messages)
            size = sum(map(len, messages)) / n
            print(
                f"appended {n} replies ({size / 1000:.1f} kB average) in "
                f"{time.perf_counter() - t0:.1f} s; {os.cpu_count()} CPUs; database {args.db}"
            )
            b_wall, b_cpu = await baseline(settings, n)
            e_wall, e_cpu = await end_to_end(app, channel, n, capture, dovecot, args.profile)
        finally:
            if postgres is not None:
                postgres.stop()
    b_rate, e_rate = n / b_wall, n / e_wall
    for label, rate, cpu in (
        ("baseline (fetch + parse):     ", b_rate, b_cpu),
        ("end to end (+ store + digest):", e_rate, e_cpu),
    ):
        print(f"{label} {rate:6.0f} msg/s   {1000 * cpu / n:6.2f} ms CPU/msg")
    print(
        f"end to end is {b_rate / e_rate:.1f}x slower than the baseline "
        f"(target: at least 100 msg/s, within 3x)"
    )
    ok = e_rate >= 100 and b_rate / e_rate <= 3
    print("target met" if ok else "TARGET MISSED")
    return 0 if ok else 1


def _form_texts(settings) -> dict[str, str]:
    """The form as respondents receive it, per language (quoted below each reply)."""
    from bot.app import load_content
    from bot.engine import Engine
    from handlers.email.form_render import FormRenderer
    from handlers.email.render import render_text

    _, questionnaire, translations = load_content(settings)
    engine = Engine(questionnaire, translations)
    form = FormRenderer(engine)
    texts = {}
    for lang in LANGS:
        state = engine.new_state(ref="CB-BENCH23", language=lang)
        state["phase"] = "asking"
        texts[lang] = render_text(form.form_doc(state))
    return texts


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
