"""Forged `From:` (issue 8, defect 3): without a reply token, mail from a report owner's address
changes nothing, the owner gets a notice with a fresh token, and the reply caps hold.

Real Dovecot in (LMTP), real SMTP capture out, the real app on SQLite. Our receiving server's
Authentication-Results header is simulated by prepending it before LMTP, as an MX would; the
forger's own copies sit below it, where a sender's headers are.
"""

from __future__ import annotations

import time
from email.message import EmailMessage
from typing import Any

import pytest

from bot.server import email_channel
from handlers.email.channel import decode_raw
from handlers.email.tokens import find_token, verify_token
from storage.models import answers, inbound_messages, outbox, respondents, submissions
from tests.email.support import Env, Person, body_of

VICTIM = "vera.victim@ministry.example.org"
FORGER_ENVELOPE = "mallory@evil.example"
SERVER_ID = "mx.capbot.test"
TRUSTING = {"email_trust_auth_results": SERVER_ID}

# Each kind of forged edit; each would change the report on main at f32d553.
FORGERIES = {
    "change_answer": "1. Mallory Forger\n3. Evil Corp",
    "switch_language": "language: fr",
    "cancel": "cancel",
    "fill_and_submit": "1. Mallory Forger\n2. m@evil.example\n3. Evil Corp\n4. 5\n7. No\n"
    "29. No\n30. 3\n39. Yes\nSUBMIT",
}


async def started(env: Env) -> Person:
    """The victim has a draft: the form, then one reply (with the token) with answers."""
    victim = Person(env, VICTIM, "Vera Victim", "en")
    await victim.write("Hello, I would like to answer the capacity-building questionnaire.")
    await victim.answer("1. Vera Victim\n3. Ministry of Environment\n4. 1")
    return victim


async def snapshot(env: Env) -> dict[str, Any]:
    (resp,) = await env.rows(respondents)
    return {
        "answers": {(r.question_id, r.repeat_index): r.value for r in await env.rows(answers)},
        "state": {
            k: resp.state.get(k) for k in ("lang", "lang_explicit", "phase", "answers", "version")
        },
        "submissions": sorted(
            (s.status, s.language, s.version) for s in await env.rows(submissions)
        ),
    }


def forged(
    env: Env,
    body: str,
    *,
    subject: str = "Re: URGENT - act now",
    headers: dict[str, str] | None = None,
) -> bytes:
    """A mail that says it is from the victim, written by someone without our mail."""
    return Person(env, VICTIM, "Vera Victim", "en").compose(body, subject=subject, headers=headers)


async def ref_of(env: Env) -> str:
    (resp,) = await env.rows(respondents)
    return resp.state["ref"]


def assert_verify_notice(env: Env, notice: EmailMessage, ref: str) -> None:
    assert notice["To"] == VICTIM
    tr = env.app.translations
    assert tr.t("en", "mail_verify", ref=ref) in body_of(notice)
    token = find_token(notice["Reply-To"])
    assert token and f"[ref:{token}]" in notice["Subject"]
    claims = verify_token(b"test-secret", token, int(time.time()))
    assert claims is not None and claims.ref == ref and claims.matches_address(VICTIM)
    assert "URGENT" not in notice["Subject"]  # the forger's subject is not reflected


@pytest.mark.parametrize("kind", list(FORGERIES))
async def test_forged_mail_changes_nothing_and_the_owner_is_told(env: Env, kind: str) -> None:
    await started(env)
    before = await snapshot(env)
    ref = await ref_of(env)
    raw = forged(env, FORGERIES[kind])
    await env.deliver(raw, mail_from=FORGER_ENVELOPE)
    notice = await env.reply()
    await env.settle()
    assert await snapshot(env) == before
    assert_verify_notice(env, notice, ref)
    # Kept, with its raw bytes and the reason.
    (row,) = [r for r in await env.rows(inbound_messages) if r.status == "rejected"]
    assert row.reason.startswith("unverified: no reply token")
    assert FORGERIES[kind].splitlines()[0].encode() in decode_raw(row.payload)
    assert row.channel_user_id == VICTIM


async def test_the_owner_goes_on_by_replying_to_the_notice(env: Env) -> None:
    victim = await started(env)
    # The genuine owner writes a new mail instead of replying: not shown to be theirs yet.
    notice = await victim.write("1. Vera V. Victim")
    assert (await snapshot(env))["answers"][("R1_name", 0)] == "Vera Victim"
    assert_verify_notice(env, notice, await ref_of(env))
    digest = await victim.answer("1. Vera V. Victim")  # replying to the notice: accepted
    assert env.app.translations.tn("en", "mail_recorded", 1) in body_of(digest)
    assert (await snapshot(env))["answers"][("R1_name", 0)] == "Vera V. Victim"


async def test_a_new_address_still_starts_a_questionnaire_without_a_token(env: Env) -> None:
    newcomer = Person(env, "new.person@example.net", "New Person")
    form = await newcomer.write("1. New Person\n3. Green Action")
    assert find_token(form["Reply-To"])
    stored = {r.question_id for r in await env.rows(answers)}
    assert stored == {"R1_name", "R3_org"}


@pytest.mark.parametrize(
    "env", [{"email_daily_reply_cap": 2, "email_unverified_reply_cap": 1}], indirect=True
)
async def test_forged_mail_neither_silences_nor_floods_the_owner(env: Env) -> None:
    victim = Person(env, VICTIM, "Vera Victim", "en")
    await victim.write("Hello, I would like to answer the capacity-building questionnaire.")
    for n in range(6):
        await env.deliver(forged(env, f"1. Forgery {n}"), mail_from=FORGER_ENVELOPE)
    await env.settle()
    to_victim = [m for m in env.smtp.messages if m.message["To"] == VICTIM]
    assert len(to_victim) == 2  # the form, and one notice for all six forgeries
    env.seen = len(env.smtp.messages)
    # The owner's own reply is still answered: the forgeries did not use up their cap.
    digest = await victim.answer("1. Vera Victim")
    assert digest["To"] == VICTIM and "Vera Victim" in body_of(digest)
    assert len(await env.rows(inbound_messages, inbound_messages.c.status == "rejected")) == 6
    # After a restart, the counts come back from the outbox, each on its own budget.
    fresh = email_channel(env.app)
    await fresh._seed_budget()
    assert fresh.budget.counts[VICTIM] == 2
    assert fresh.unverified_budget.counts[VICTIM] == 1
    notices = [r for r in await env.rows(outbox) if r.payload.get("cap") == "unverified"]
    assert len(notices) == 1


# -- Authentication-Results from our receiving server ----------------------------------------

OURS_PASS = (
    f"{SERVER_ID}; spf=pass smtp.mailfrom=ministry.example.org; "
    "dkim=pass header.d=ministry.example.org; dmarc=pass (p=reject) "
    "header.from=ministry.example.org"
)
OURS_FAIL = (
    f"{SERVER_ID}; spf=fail smtp.mailfrom=evil.example; dkim=none; "
    "dmarc=fail header.from=ministry.example.org"
)


async def deliver_through_mx(env: Env, raw: bytes, ours: str | None) -> EmailMessage:
    if ours is not None:
        raw = f"Authentication-Results: {ours}\n".encode() + raw
    await env.deliver(raw, mail_from=FORGER_ENVELOPE)
    return await env.reply()


@pytest.mark.parametrize("env", [TRUSTING], indirect=True)
async def test_a_pass_from_our_server_stands_in_for_the_token(env: Env) -> None:
    await started(env)
    digest = await deliver_through_mx(
        env, forged(env, "3. Ministry of the Environment"), OURS_PASS
    )
    assert env.app.translations.tn("en", "mail_recorded", 1) in body_of(digest)
    assert (await snapshot(env))["answers"][("R3_org", 0)] == "Ministry of the Environment"


@pytest.mark.parametrize("env", [TRUSTING], indirect=True)
@pytest.mark.parametrize(
    "case", ["forged_below_ours", "forged_alone", "other_server", "unaligned_dkim", "helo_only"]
)
async def test_forged_authentication_results_are_not_believed(env: Env, case: str) -> None:
    await started(env)
    before = await snapshot(env)
    ours: str | None = OURS_FAIL
    theirs = OURS_PASS  # the forger writes a pass "from our server" into the mail
    if case == "forged_alone":
        ours = None  # only a header with our server's id is read
        theirs = "mx.elsewhere.example; dmarc=pass header.from=ministry.example.org"
    elif case == "other_server":
        ours, theirs = "mx.elsewhere.example; dmarc=pass header.from=ministry.example.org", ""
    elif case == "unaligned_dkim":
        ours, theirs = f"{SERVER_ID}; dkim=pass header.d=evil.example; dmarc=none", ""
    elif case == "helo_only":
        ours, theirs = f"{SERVER_ID}; spf=pass smtp.helo=ministry.example.org", ""
    headers = {"Authentication-Results": theirs} if theirs else None
    notice = await deliver_through_mx(env, forged(env, "1. Mallory Forger", headers=headers), ours)
    assert await snapshot(env) == before
    assert_verify_notice(env, notice, await ref_of(env))
    (row,) = await env.rows(inbound_messages, inbound_messages.c.status == "rejected")
    assert f"no aligned DMARC/DKIM/SPF pass from {SERVER_ID}" in row.reason


async def test_authentication_results_are_ignored_unless_configured(env: Env) -> None:
    await started(env)
    before = await snapshot(env)
    notice = await deliver_through_mx(env, forged(env, "1. Mallory Forger"), OURS_PASS)
    assert await snapshot(env) == before
    assert_verify_notice(env, notice, await ref_of(env))
