"""Probe (issue 8, defect 3): how many forged-`From` mails change a victim's email report?

    python -m tests.email.forgery_probe --n 10

Real Dovecot (LMTP in, IMAP to the bot), a real SMTP capture, the real app on SQLite. Each
victim starts a report (the form, then one proper reply with three answers). Then a forger
who has never seen our mail sends one mail "From:" the victim, of one kind: change answers,
switch the language, cancel, fill in and submit, or change answers with a forged
"Authentication-Results: <our server>; dmarc=pass" below our server's own "dmarc=fail".
A forgery is "accepted" when the victim's answers, language, phase or submission status
differ afterwards.

Then the reply cap: per victim, `--flood` forged mails, then one genuine reply with the
token. Reported: replies the victim got because of forgeries, and victims whose genuine
reply went unanswered (silenced).

It uses only what main at f32d553 also has, so it runs against that code too: from a
worktree, `PYTHONPATH=<worktree> python -m tests.email.forgery_probe` after copying it in.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from email.message import EmailMessage
from email.utils import make_msgid
from typing import Any

from sqlalchemy import select

from bot.app import build_app
from bot.config import Settings, load_settings
from bot.server import email_channel
from handlers.email.channel import EmailChannel
from storage.models import answers, respondents, submissions
from testkit.dovecot import Dovecot
from testkit.smtp import SmtpCapture

SERVER_ID = "mx.capbot.test"
FORGERIES = {
    "change_answer": "1. Mallory Forger\n3. Evil Corp",
    "switch_language": "language: fr",
    "cancel": "cancel",
    "fill_and_submit": "1. Mallory Forger\n2. m@evil.example\n3. Evil Corp\n4. 5\n7. No\n"
    "29. No\n30. 3\n39. Yes\nSUBMIT",
    "change_answer_forged_auth_results": "1. Mallory Forger\n3. Evil Corp",
}
WAIT = 120.0


def compose(sender: str, to: str, body: str, subject: str, headers: dict[str, str]) -> bytes:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    msg["Message-ID"] = make_msgid(domain=sender.split("@")[1])
    msg["Content-Language"] = "en"
    for name, value in headers.items():
        msg[name] = value
    msg.set_content(body)
    return bytes(msg)


class Probe:
    def __init__(self, dovecot: Dovecot, smtp: SmtpCapture, channel: EmailChannel) -> None:
        self.dovecot, self.smtp, self.channel = dovecot, smtp, channel
        self.bot = dovecot.settings().address

    async def deliver(self, items: list[tuple[str, bytes]], envelope: str | None = None) -> None:
        """Deliver (recipient, raw) pairs and wait until each is processed and sent."""
        target = self.channel.processed + len(items)
        for to, raw in items:
            await asyncio.to_thread(
                self.dovecot.deliver, [to], raw, envelope or "someone@example.net"
            )
        deadline = time.monotonic() + WAIT
        while self.channel.processed < target:
            if time.monotonic() > deadline:
                raise TimeoutError(f"processed {self.channel.processed} of {target}")
            await asyncio.sleep(0.05)
        await asyncio.wait_for(self.channel.dispatcher.wait_idle(), WAIT)

    def last_to(self, address: str) -> EmailMessage | None:
        for captured in reversed(self.smtp.messages):
            if captured.message["To"] == address:
                return captured.message
        return None

    def count_to(self, address: str) -> int:
        return sum(1 for c in self.smtp.messages if c.message["To"] == address)

    async def start_reports(self, victims: list[str]) -> None:
        await self.deliver(
            [
                (
                    self.bot,
                    compose(
                        v,
                        self.bot,
                        "Hello, I would like to answer the capacity-building questionnaire.",
                        "Questionnaire",
                        {},
                    ),
                )
                for v in victims
            ]
        )
        await self.genuine_replies(victims, "1. Vera Victim\n3. Ministry of Environment\n4. 1")

    async def genuine_replies(self, victims: list[str], body: str) -> None:
        items = []
        for v in victims:
            last = self.last_to(v)
            assert last is not None and last["Reply-To"], f"no mail with a token for {v}"
            items.append(
                (
                    last["Reply-To"],
                    compose(
                        v,
                        last["Reply-To"],
                        body,
                        "Re: " + last["Subject"],
                        {"In-Reply-To": last["Message-ID"]},
                    ),
                )
            )
        await self.deliver(items)

    async def snapshot(self, victim: str) -> Any:
        db = self.channel.app.db
        async with db.connect() as conn:
            resp = (
                await conn.execute(
                    select(respondents).where(
                        respondents.c.channel == "email", respondents.c.channel_user_id == victim
                    )
                )
            ).one()
            subs = sorted(
                (s.status, s.language, s.version)
                for s in await conn.execute(
                    select(submissions).where(submissions.c.respondent_id == resp.id)
                )
            )
            ids = [
                s.id
                for s in await conn.execute(
                    select(submissions.c.id).where(submissions.c.respondent_id == resp.id)
                )
            ]
            stored = sorted(
                (a.question_id, a.repeat_index, json.dumps(a.value))
                for a in await conn.execute(
                    select(answers).where(answers.c.submission_id.in_(ids))
                )
            )
        st = resp.state
        return (
            st.get("lang"),
            st.get("phase"),
            json.dumps(st.get("answers"), sort_keys=True),
            subs,
            stored,
        )

    def forged(self, victim: str, kind: str, n: int = 0) -> bytes:
        headers = {}
        if kind.endswith("forged_auth_results"):
            headers["Authentication-Results"] = (
                f"{SERVER_ID}; dmarc=pass header.from={victim.split('@')[1]}"
            )
        raw = compose(
            victim, self.bot, FORGERIES.get(kind, f"1. Forgery {n}"), "Re: Questionnaire", headers
        )
        # Our receiving server's verdict, on top (as an MX prepends it).
        ours = (
            f"{SERVER_ID}; spf=fail smtp.mailfrom=evil.example; dkim=none; "
            f"dmarc=fail header.from={victim.split('@')[1]}"
        )
        return f"Authentication-Results: {ours}\n".encode() + raw


async def run(n: int, flood: int, victims_flooded: int) -> dict[str, Any]:
    dovecot = Dovecot()
    dovecot.start()
    smtp = SmtpCapture()
    await smtp.start()
    imap = dovecot.settings()
    settings: dict[str, Any] = {
        "imap_host": imap.host,
        "imap_port": imap.port,
        "imap_user": imap.user,
        "imap_password": imap.password,
        "imap_security": "plain",
        "smtp_host": "127.0.0.1",
        "smtp_port": smtp.port,
        "smtp_security": "plain",
        "email_from": imap.address,
        "secret_key": "probe-secret",
        "imap_poll_seconds": 1.0,
        "log_level": "WARNING",
    }
    if "email_trust_auth_results" in Settings.model_fields:  # not on the old code
        settings["email_trust_auth_results"] = SERVER_ID
    directory = tempfile.mkdtemp(prefix="forgery-probe-")
    app = await build_app(
        load_settings(database_url=f"sqlite+aiosqlite:///{directory}/probe.db", **settings)
    )
    channel = email_channel(app)
    await channel.start()
    probe = Probe(dovecot, smtp, channel)
    result: dict[str, Any] = {"n": n, "accepted": {}, "cap": app.settings.email_daily_reply_cap}
    try:
        for kind in FORGERIES:
            victims = [
                f"victim.{kind.replace('_', '-')}.{i}@ministry{i}.example.org" for i in range(n)
            ]
            await probe.start_reports(victims)
            before = [await probe.snapshot(v) for v in victims]
            await probe.deliver(
                [(probe.bot, probe.forged(v, kind)) for v in victims],
                envelope="mallory@evil.example",
            )
            after = [await probe.snapshot(v) for v in victims]
            result["accepted"][kind] = sum(b != a for b, a in zip(before, after, strict=True))
        # The cap: a flood of forgeries, then the victim's own reply.
        victims = [f"flooded.{i}@agency{i}.example.org" for i in range(victims_flooded)]
        await probe.start_reports(victims)
        sent_before = {v: probe.count_to(v) for v in victims}
        await probe.deliver(
            [(probe.bot, probe.forged(v, "flood", k)) for k in range(flood) for v in victims],
            envelope="mallory@evil.example",
        )
        caused = {v: probe.count_to(v) - sent_before[v] for v in victims}
        await probe.genuine_replies(victims, "6. Kenya")
        answered = {v: probe.count_to(v) - sent_before[v] - caused[v] for v in victims}
        result["flood"] = {
            "victims": victims_flooded,
            "forged_per_victim": flood,
            "replies_caused_per_victim": sorted(set(caused.values())),
            "silenced": sum(1 for v in victims if answered[v] == 0),
        }
    finally:
        await channel.stop()
        await app.close()
        await smtp.stop()
        dovecot.stop()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=10, help="forged mails of each kind")
    parser.add_argument("--flood", type=int, default=40, help="forged mails per flooded victim")
    parser.add_argument("--victims", type=int, default=3, help="flooded victims")
    args = parser.parse_args()
    result = asyncio.run(run(args.n, args.flood, args.victims))
    total = sum(result["accepted"].values())
    for kind, count in result["accepted"].items():
        print(f"{kind:36} {count:3} of {args.n} forged mails accepted")
    print(f"{'total':36} {total:3} of {args.n * len(FORGERIES)}")
    f = result["flood"]
    print(
        f"flood: {f['forged_per_victim']} forged mails to each of {f['victims']} victims "
        f"(cap {result['cap']}/day): replies caused per victim {f['replies_caused_per_victim']}"
        f", victims whose own reply went unanswered: {f['silenced']}"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
