"""One address sending 1,000 messages (issue 13, abuse): throttled by the daily reply caps,
nothing lost, other respondents still answered.

The flood goes through real Dovecot (LMTP in, one connection, while capbot's IMAP ingest
reads the folder with IDLE) and the bot's replies through the SMTP capture. It mixes what a
runaway script or a mail loop sends: replies with the genuine reply token and answer lines
(valid and invalid), mail without a token, forged tokens, and auto-replies. Checked:

- replies to the flooding address: at most CAPBOT_EMAIL_DAILY_REPLY_CAP answers plus
  CAPBOT_EMAIL_UNVERIFIED_REPLY_CAP notices to mail not shown to be theirs (two budgets, so
  forged mail can neither silence nor flood a person); every outbox row to it was sent;
- one WARNING per budget when the cap is reached, not one per message;
- every one of the 1,000 messages is in the inbound log, processed or kept with its reason,
  none failed, and the folder is empty;
- a bystander writing in the middle of the flood gets the form.

CAPBOT_FLOOD_MAILS changes the number of messages (default 1,000).
"""

from __future__ import annotations

import asyncio
import logging
import os
import smtplib
import time
from collections import Counter

import pytest

from storage.models import answers as answer_rows
from storage.models import inbound_messages, outbox, respondents, submissions
from tests.email.support import Env, Person, message_id

MAILS = int(os.environ.get("CAPBOT_FLOOD_MAILS", "1000"))
BOUND = 900.0  # seconds: an upper bound for the flood to drain, not an expectation
CAP, UNVERIFIED_CAP = 30, 3


def _deliver_all(env: Env, mails: list[tuple[bytes, str]], sender: str) -> None:
    """LMTP over one connection, as a mail server hands a burst to Dovecot."""
    dovecot = env.dovecot
    with smtplib.LMTP(dovecot.host, dovecot.lmtp_port, timeout=60) as lmtp:
        for raw, rcpt in mails:
            refused = lmtp.sendmail(sender, [rcpt], raw)
            assert not refused, refused


async def _drained(env: Env, ids: set[str]) -> int:
    """Wait until every flood message is in the inbound log and the folder is empty."""
    deadline = time.monotonic() + BOUND
    while True:
        rows = await env.rows(inbound_messages)
        seen = ids & {r.channel_message_id for r in rows}
        if len(seen) == len(ids) and not env.dovecot.list_uids(None):
            return len(seen)
        assert time.monotonic() < deadline, f"{len(seen)} of {len(ids)} recorded"
        await asyncio.sleep(0.2)


@pytest.mark.parametrize(
    "env",
    [{"email_daily_reply_cap": CAP, "email_unverified_reply_cap": UNVERIFIED_CAP}],
    indirect=True,
)
async def test_one_address_sending_1000_mails_is_throttled_and_loses_nothing(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="handlers.email.channel")
    flooder = Person(env, "runaway@example.net", "Runaway Script")
    form = await flooder.write("Hello, I would like to answer the questionnaire.")
    reply_to, thread = form["Reply-To"], form["Message-ID"]
    assert reply_to != env.bot  # the reply token rides in the address

    mails: list[tuple[bytes, str]] = []
    kinds: Counter[str] = Counter()
    for i in range(MAILS):
        kind = ("token", "token", "invalid", "no_token", "forged", "auto")[i % 6]
        kinds[kind] += 1
        if kind == "token":
            raw = flooder.compose(
                f"1. Runaway Script {i}\n3. Ministry {i}",
                subject="Re: " + form["Subject"],
                to=reply_to,
                headers={"In-Reply-To": thread},
            )
        elif kind == "invalid":
            raw = flooder.compose(
                f"2. not an address {i}\n4. 99\n14. yesterday-ish",
                subject="Re: " + form["Subject"],
                to=reply_to,
                headers={"In-Reply-To": thread},
            )
        elif kind == "no_token":
            raw = flooder.compose(f"1. Someone Else {i}")
        elif kind == "forged":
            forged = reply_to.replace("+", f"+x{i:x}", 1)
            raw = flooder.compose(f"1. Forged {i}", to=forged, subject="Re: Questionnaire")
        else:
            raw = flooder.compose(
                "I am out of the office until Monday.",
                subject="Automatic reply: Questionnaire",
                headers={"Auto-Submitted": "auto-replied"},
            )
        rcpt = reply_to if kind in ("token", "invalid") else env.bot
        if kind == "forged":
            rcpt = forged
        mails.append((raw, rcpt))
    ids = {message_id(raw).strip("<>") for raw, _ in mails}  # stored without <>
    assert len(ids) == MAILS

    started = time.monotonic()
    half = MAILS // 2
    await asyncio.to_thread(_deliver_all, env, mails[:half], flooder.address)
    bystander = Person(env, "bystander@example.org", "Bystander")
    await env.deliver(
        bystander.compose("Hello, I would like to answer the questionnaire."),
        mail_from=bystander.address,
    )
    await asyncio.to_thread(_deliver_all, env, mails[half:], flooder.address)
    recorded = await _drained(env, ids)
    await asyncio.wait_for(env.channel.dispatcher.wait_idle(), BOUND)
    seconds = time.monotonic() - started

    # Nothing lost: each message processed, or kept with its reason; none failed.
    rows = {r.channel_message_id: r for r in await env.rows(inbound_messages)}
    statuses = Counter(rows[i].status for i in ids)
    assert recorded == MAILS
    assert statuses["failed"] == 0, statuses
    assert all(rows[i].reason for i in ids if rows[i].status != "processed")
    assert all(rows[i].payload for i in ids)  # raw bytes kept

    # Throttled: the two daily budgets, counted from the outbox, and the sends match.
    to_flooder = [r for r in await env.rows(outbox) if r.address == flooder.address]
    unverified = [r for r in to_flooder if (r.payload or {}).get("cap") == "unverified"]
    answers = len(to_flooder) - len(unverified)
    assert answers <= CAP, answers
    assert len(unverified) <= UNVERIFIED_CAP, len(unverified)
    assert {r.status for r in to_flooder} == {"sent"}
    sent = [m for m in env.smtp.messages if m.message["To"] == flooder.address]
    assert len(sent) == len(to_flooder)
    assert len(sent) <= CAP + UNVERIFIED_CAP
    warnings = [
        r
        for r in caplog.records
        if r.levelno == logging.WARNING and flooder.address in r.getMessage()
    ]
    assert len(warnings) == 2, [r.getMessage() for r in warnings]  # one per budget, once

    # The draft holds only what the genuine mails said, and nothing invalid: mail without a
    # token or with a forged one changed nothing.
    (owner,) = [
        r
        for r in await env.rows(respondents)
        if r.email == flooder.address or r.channel_user_id == flooder.address
    ]
    subs = {s.id for s in await env.rows(submissions) if s.respondent_id == owner.id}
    stored = {
        a.question_id: a.value for a in await env.rows(answer_rows) if a.submission_id in subs
    }
    assert str(stored["R1_name"]).startswith("Runaway Script "), stored["R1_name"]
    assert str(stored["R3_org"]).startswith("Ministry "), stored
    assert "R2_email" not in stored or "@" in str(stored["R2_email"]), stored

    # The bystander was answered in the middle of it.
    assert [m.message["To"] for m in env.smtp.messages].count(bystander.address) == 1
    print(
        f"\nflood: {MAILS} mails ({dict(kinds)}) from one address drained in {seconds:.0f} s "
        f"({MAILS / seconds:.0f}/s); statuses {dict(statuses)}; replies to it: {len(sent)} "
        f"({answers} answers, cap {CAP}; {len(unverified)} notices, cap {UNVERIFIED_CAP}); "
        f"lost 0"
    )
