"""The Bot API failing for a while (issue 13, faults): a share of every call, getUpdates
included, answers 500 Internal Server Error or hangs past the client's read timeout. Real
parts: capbot's Telegram channel (PTB, long polling) against the Bot API fake on loopback,
SQLite.

Reduced by default (8 respondents, faults until each kind hit a few times, ~10 s);
CAPBOT_FULL_FAULT_TEST=1: 20 respondents and two minutes of faults.

Checked: every update the users sent is stored once and every respondent gets through the whole
questionnaire (no update lost); every reply reaches its chat exactly once, in the same number
as without faults (the fake fails a call before handling it, so a retry cannot double it);
failed sends are retried with exponential backoff (the dispatcher's logged delays, and the
spacing of the attempts the fake saw).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import re
import time
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from storage.models import answers, inbound_messages, outbox, submissions
from testkit.fake_bot_api import FakeBotApi
from testkit.respondents import Respondent, duplicate_sends
from tests.telegram.harness import running

pytestmark = pytest.mark.filterwarnings("ignore:.*retry_after:DeprecationWarning")
FULL = os.environ.get("CAPBOT_FULL_FAULT_TEST", "").strip() in {"1", "true", "yes"}
USERS = 20 if FULL else 8
# Full size: the faults last two minutes, respondents thinking ~2 s an answer meanwhile.
FAULT_SECONDS, THINK = (120.0, 2.0) if FULL else (0.0, 0.0)
WAIT = 120.0  # seconds a respondent waits for the bot at most: an upper bound
RETRY = re.compile(r"send to \S+ failed \((?P<why>.*)\); retry (?P<n>\d+) in (?P<s>[\d.]+)s")


async def test_500s_and_timeouts_lose_no_update_and_deliver_each_reply_once(
    make_app, sqlite_url: str, api: FakeBotApi, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="bot.outbox")
    async with running(make_app, sqlite_url, api) as bot:
        bot.channel._intake.retry_delay = 0.2  # type: ignore[union-attr]  # getUpdates backoff
        # Reference: one respondent with no faults, for the number of messages a run gets.
        reference = api.user(900_000, language_code="en")
        await Respondent(api, reference, wait=WAIT).run()
        await asyncio.wait_for(bot.channel.dispatcher.wait_idle(), WAIT)
        expected, _ = duplicate_sends(api, [reference])

        # A Bot API in trouble: 25 % of all calls answer 500, 4 % hang 6 s (past the 5 s read
        # timeout), while USERS respondents go through the questionnaire at once.
        api.set_faults(error_rate=0.25, stall_rate=0.04, stall_seconds=6.0, seed=13)
        users = [api.user(900_001 + n, language_code="en") for n in range(USERS)]
        runs = [
            asyncio.create_task(Respondent(api, u, wait=WAIT, think=THINK, seed=n).run())
            for n, u in enumerate(users)
        ]
        started = time.monotonic()
        # "For a while": until enough of each fault hit, getUpdates and sends alike.
        failed = lambda method: sum(  # noqa: E731
            1 for r in api.requests if r.method.lower() == method and r.status >= 500
        )
        await api.wait_for(
            lambda: (
                api.faults_injected["stall"] >= 4
                and failed("getupdates") >= 5
                and failed("sendmessage") >= 20
            ),
            WAIT,
        )
        await asyncio.sleep(max(0.0, FAULT_SECONDS - (time.monotonic() - started)))
        faults = dict(api.faults_injected)
        seconds = time.monotonic() - started
        api.set_faults()
        await asyncio.wait_for(asyncio.gather(*runs), WAIT * 2)
        await asyncio.wait_for(bot.channel.dispatcher.wait_idle(), WAIT)
        inbound = await bot.rows(inbound_messages)
        submitted = [s for s in await bot.rows(submissions) if s.status == "submitted"]
        answer_rows = Counter(
            (a.submission_id, a.question_id, a.repeat_index) for a in await bot.rows(answers)
        )
        outbox_statuses = Counter(r.status for r in await bot.rows(outbox))

    # No update lost, none processed twice.
    sent = {f"{api.bot_user['id']}:{u['update_id']}" for u in api.update_log}
    stored = Counter(r.channel_message_id for r in inbound)
    assert set(stored) == sent and set(stored.values()) == {1}
    assert Counter(r.status for r in inbound) == {"processed": len(inbound)}
    assert len(submitted) == USERS + 1
    assert set(answer_rows.values()) == {1}
    per_submission = Counter(sub for sub, _, _ in answer_rows)
    assert len(set(per_submission.values())) == 1  # everyone the same answers
    # Every reply delivered exactly once: as many messages as without faults, in every chat.
    assert set(outbox_statuses) <= {"sent", "coalesced"}, outbox_statuses
    usual, duplicates = duplicate_sends(api, users)
    assert (usual, duplicates) == (expected, 0)

    # Retried with backoff: the n-th retry of a row waits 0.5 × 2^(n-1) s (±20 % jitter)...
    retries = [
        RETRY.search(r.getMessage())
        for r in caplog.records
        if r.name == "bot.outbox" and "telegram" in r.getMessage()
    ]
    retries = [m for m in retries if m]
    assert retries, "no send was retried"
    for m in retries:
        n, delay = int(m["n"]), float(m["s"])
        assert 0.8 * 0.5 * 2 ** (n - 1) - 0.05 <= delay <= 1.2 * 0.5 * 2 ** (n - 1) + 0.05, m[0]
    deepest = max(int(m["n"]) for m in retries)
    assert deepest >= 2
    assert any("TimedOut" in m["why"] for m in retries)  # the hung calls counted as failures
    # ... and the fake saw the attempts of one message spaced at least that far apart.
    attempts: defaultdict[tuple[str, str], list[float]] = defaultdict(list)
    for r in api.requests:
        if r.method.lower() == "sendmessage":
            attempts[(str(r.params.get("chat_id")), str(r.params.get("text")))].append(r.at)
    spaced = 0
    for times in attempts.values():
        gaps = [b - a for a, b in itertools.pairwise(times)]
        if len(gaps) >= 2 and all(g >= 0.8 * 0.5 * 2**i - 0.05 for i, g in enumerate(gaps)):
            spaced += 1
    assert spaced >= 1
    calls = len(api.requests)
    print(
        f"\n{USERS} respondents, {len(sent)} updates, {calls} Bot API calls: {faults} faults "
        f"injected over {seconds:.0f} s "
        f"({failed('getupdates')} getUpdates and {failed('sendmessage')} sendMessage "
        f"failed), deepest retry {deepest}; {expected} messages a chat, 0 duplicates"
    )
