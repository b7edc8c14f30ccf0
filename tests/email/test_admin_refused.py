"""No admin command by email (issue 13, abuse): export and stats exist only as `capbot export`
and `capbot stats` on the server, and as /export and /stats for Telegram admins.

A mail asking for an export or the figures — from anyone, even from an address listed in
CAPBOT_ADMIN_EMAILS (From is easily forged) — is an ordinary turn of its sender's own
conversation: through Dovecot, its answer carries no attachment, no other respondent's
answers and no figures.
"""

from __future__ import annotations

import pytest

from storage.models import inbound_messages
from tests.email.support import Env, Person, body_of

ADMIN_MAIL = "secretariat@example.org"
ASKS = [  # (subject, body)
    ("export", ""),
    ("/export", "/export all"),
    ("Export all submissions", "export all fr split\nstatus=all"),
    ("stats", "/stats"),
    ("STATS", "stats please"),
    ("/admin", "/admin export"),
]


@pytest.mark.parametrize("env", [{"admin_emails": ADMIN_MAIL}], indirect=True)
async def test_export_and_stats_by_mail_give_nothing_privileged(env: Env) -> None:
    victim = Person(env, "marie@example.net", "Marie")
    await victim.write("Bonjour, je voudrais répondre au questionnaire sur les capacités.")
    await victim.answer("1. Marie Curie-Sklodowska\n3. Ministère de l'Environnement")
    await env.settle()
    before = len(env.smtp.messages)

    askers = [Person(env, "curious@example.net", "Curious"), Person(env, ADMIN_MAIL, "Sec")]
    for person in askers:
        for subject, body in ASKS:
            await env.deliver(
                person.compose(body or subject, subject=subject), mail_from=person.address
            )
    await env.settle()

    replies = [m.message for m in env.smtp.messages[before:]]
    assert {m["To"] for m in replies} <= {p.address for p in askers}
    assert {p.address for p in askers} <= {m["To"] for m in replies}  # each was answered
    for message in replies:
        assert list(message.iter_attachments()) == [], message["Subject"]
        assert all(part.get_content_maintype() in ("text", "multipart") for part in message.walk())
        text = body_of(message)
        assert "Marie" not in text and "Sklodowska" not in text
        assert "marie@example.net" not in text
    logged = [
        r
        for r in await env.rows(inbound_messages)
        if r.channel_user_id in {p.address for p in askers}
    ]
    assert len(logged) == len(askers) * len(ASKS)  # every mail kept
    print(f"asked by mail: {len(logged)}; replies {len(replies)}, attachments 0")
