"""Mail fetched in one IMAP batch: the batch reads its senders' report states and reply counts
in one go, and a sender's later mail in the same batch still sees what the earlier one did
(the report it began, the replies it used up).

Real Dovecot in (LMTP), real SMTP capture out, the real app on SQLite. The mails are delivered
before the channel starts, so that its first fetch holds them all.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest

from bot.server import email_channel
from handlers.email.tokens import make_token
from storage.models import answers, inbound_messages, respondents
from testkit.imap import ImapSettings
from testkit.smtp import SmtpCapture
from tests.email.support import Env, Person, settings_for

OWNER = "olga.owner@ministry.example.org"
OTHER = "omar.other@ministry.example.org"


@pytest.fixture
async def idle(
    imap_server: ImapSettings,
    smtp_server: SmtpCapture,
    make_app,
    sqlite_url: str,
    request: pytest.FixtureRequest,
) -> AsyncIterator[Env]:
    """Like `env`, with the channel not started yet."""
    extra = getattr(request, "param", {})
    app = await make_app(sqlite_url, **settings_for(imap_server, smtp_server.port, **extra))
    channel = email_channel(app)
    try:
        yield Env(app, channel, imap_server.server, smtp_server, imap_server.address)
    finally:
        await channel.stop()


async def test_a_second_mail_in_the_batch_is_checked_against_the_report_the_first_began(
    idle: Env,
) -> None:
    owner, other = Person(idle, OWNER, "Olga Owner", "en"), Person(idle, OTHER, "Omar", "en")
    await idle.deliver(owner.compose("Hello, I would like to answer."), mail_from=OWNER)
    # Same From, no reply token: once the first mail has begun a report, this changes nothing.
    await idle.deliver(owner.compose("1. Mallory Forger"), mail_from="mallory@evil.example")
    await idle.deliver(other.compose("Hello"), mail_from=OTHER)
    await idle.channel.start()
    await idle.settle()
    rows = {r.id: r for r in await idle.rows(inbound_messages)}
    statuses = sorted((r.channel_user_id, r.status) for r in rows.values())
    assert statuses == [(OWNER, "processed"), (OWNER, "rejected"), (OTHER, "processed")]
    (rejected,) = [r for r in rows.values() if r.status == "rejected"]
    assert rejected.reason.startswith("unverified: no reply token for report CB-")
    assert not [a for a in await idle.rows(answers) if a.value == "Mallory Forger"]
    # Each new person got the form; the owner also got the notice with a fresh token.
    to = sorted(m.message["To"] for m in idle.smtp.messages)
    assert to == [OWNER, OWNER, OTHER]


@pytest.mark.parametrize("idle", [{"email_daily_reply_cap": 2}], indirect=True)
async def test_the_reply_cap_holds_within_one_batch(idle: Env) -> None:
    owner = Person(idle, OWNER, "Olga Owner", "en")
    assert await idle.channel.process_raw(owner.compose("Hello"))  # the form: reply 1 of 2
    (resp,) = await idle.rows(respondents)
    token = make_token(idle.channel.secret, resp.state["ref"], OWNER, int(time.time()))
    reply_to = f"{idle.channel.local}+{token}@{idle.channel.domain}"
    for body in ("1. Olga Owner", "3. Ministry of Environment", "4. 1"):
        raw = owner.compose(body, subject=f"Re: Questionnaire [ref:{token}]", to=reply_to)
        await idle.deliver(raw, to=reply_to, mail_from=OWNER)
    await idle.channel.start()
    await idle.settle()
    # All three recorded; one digest (reply 2 of 2), then the cap: no more replies today.
    assert {a.question_id for a in await idle.rows(answers)} == {"R1_name", "R3_org", "R4_orgtype"}
    statuses = [r.status for r in await idle.rows(inbound_messages)]
    assert statuses == ["processed"] * 4
    assert [m.message["To"] for m in idle.smtp.messages] == [OWNER, OWNER]
