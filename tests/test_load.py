"""Load, reduced: 50 Telegram and 20 email respondents at once on a real `capbot serve`
(SQLite, the Bot API fake, Dovecot, an SMTP capture) for about 20 s (testkit/load.py).

Checked: every respondent finished and got every reply, every update and every mail is
stored and processed, nothing is left unconfirmed or in INBOX, every reply was sent, no 429,
no ERROR line or traceback in the serve log, and each submission holds the script's answers.
No timing is asserted: the full size and its figures are `python -m benchmarks.load_bench`
(docs/RELIABILITY.md, "Load").
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from testkit.imap import ImapSettings
from testkit.load import LoadConfig, run_load

TELEGRAM, EMAIL = 50, 20


async def test_telegram_and_email_respondents_at_once_lose_nothing(
    imap_server: ImapSettings, tmp_path: Path
) -> None:
    # 20 s is faster than people answer: 37 actions in 18 s would be over capbot's inbound
    # throttle (30 a minute per chat), which the full-size run keeps at its default.
    config = LoadConfig(
        telegram=TELEGRAM,
        email=EMAIL,
        seconds=20,
        sample_every=5,
        inbound_limit=200,
        reply_timeout=60,
        drain_timeout=60,
    )
    r = await run_load(config, imap_server, tmp_path)
    summary = (
        f"failures {r.failures[:5]}, inbound {dict(r.inbound)}, outbox {dict(r.outbox)},"
        f" log {dict(r.log_levels)} {r.log_samples[:5]}\n{r.first_traceback}"
    )
    assert r.failures == [], summary
    assert (r.telegram_done, r.email_done) == (TELEGRAM, EMAIL), summary
    # Every message kept and processed, none left behind.
    assert r.updates_sent == TELEGRAM * 37 and r.updates_unstored == 0, summary
    assert r.mails_sent == EMAIL * 4 and r.mails_unstored == 0, summary
    assert r.inbound == Counter(
        {("telegram", "processed"): TELEGRAM * 37, ("email", "processed"): EMAIL * 4}
    ), summary
    assert (r.updates_left, r.mails_left) == (0, 0), summary
    # Every reply sent (a turn's replies to one chat may be coalesced), no 429, a clean log.
    assert set(r.outbox) <= {"sent", "coalesced"} and r.outbox["sent"], summary
    assert r.refused_429 == 0
    assert (r.log_levels["ERROR"], r.log_levels["CRITICAL"], r.tracebacks) == (0, 0, 0), summary
    # Everyone's answers stored: one submitted report each, the same answers per channel.
    assert r.submitted == TELEGRAM + EMAIL, summary
    # (the Telegram script answers 31 questions, the email one 8)
    assert r.answers_per_submission == Counter(
        {("telegram", 31): TELEGRAM, ("email", 8): EMAIL}
    ), r.answers_per_submission
    assert r.errors == 0
    assert len(r.telegram_latencies) == TELEGRAM * 37 and len(r.email_latencies) == EMAIL * 4
    assert len(r.rss_mb) >= 2
