"""Bounces of invitation mails through Dovecot: a DSN marks the invitation it answers
undeliverable (found by its token, or by the original Message-ID alone) and the address
unreachable; a delay notice changes nothing; none is answered."""

from __future__ import annotations

from datetime import date

from sqlalchemy import select

from bot.contacts import Contact
from bot.invitations import Invitations
from handlers.email.invitation_mail import invitation_sender
from storage.models import addresses, inbound_messages, invitations
from tests.email.support import Env

DEADLINE = date(2031, 10, 1)


def dsn(bot: str, original: str, *, action: str = "failed", status: str = "5.1.1",
        recipient: str) -> bytes:
    """A Postfix-style RFC 3464 report returning the original's headers."""
    boundary = "dsn-boundary-1"
    return (
        "Return-Path: <>\r\n"
        "From: MAILER-DAEMON@mx.example.net (Mail Delivery System)\r\n"
        f"To: {bot}\r\nSubject: Undelivered Mail Returned to Sender\r\n"
        f"Message-ID: <dsn-{action}-{recipient}@mx.example.net>\r\n"
        "Auto-Submitted: auto-replied\r\nMIME-Version: 1.0\r\n"
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"'
        "\r\n\r\n"
        f"--{boundary}\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
        f"Your message could not be delivered to {recipient}.\r\n\r\n"
        f"--{boundary}\r\nContent-Type: message/delivery-status\r\n\r\n"
        "Reporting-MTA: dns; mx.example.net\r\n\r\n"
        f"Final-Recipient: rfc822; {recipient}\r\nAction: {action}\r\nStatus: {status}\r\n"
        f"Diagnostic-Code: smtp; 550 {status} <{recipient}>: User unknown\r\n\r\n"
        f"--{boundary}\r\nContent-Type: text/rfc822-headers\r\n\r\n{original}\r\n"
        f"--{boundary}--\r\n").encode()


def headers_of(msg, *names: str) -> str:
    return "".join(f"{n}: {msg[n]}\r\n" for n in names if msg[n] is not None)


async def test_a_dsn_marks_its_invitation_undeliverable(env: Env) -> None:
    channel = env.channel
    channel.dispatcher.send = invitation_sender(channel, channel.dispatcher.send, rate=0)
    app = env.app
    inv = Invitations(app.database, app.engines[app.questionnaire.id], app.translations,
                      secret=b"test-secret", email_from=env.bot, bot_username=None,
                      new_reference=app.service.new_reference)
    people = [Contact(2 + i, f"{who}@example.org", who.title(), "Org", "fra", "fr", None)
              for i, who in enumerate(("gone", "moved", "slow"))]
    report = await inv.queue(people, DEADLINE, resend=False, publish=channel.dispatcher.enqueue)
    sent = {m["To"]: m for m in await env.replies(3)}
    await channel.dispatcher.wait_idle()
    ids = {o.email: o.invitation_id for o in report.outcomes}

    # 1: the returned headers carry the token (subject tag, Reply-To).
    gone = sent["gone@example.org"]
    await env.deliver(dsn(env.bot, headers_of(gone, "From", "To", "Subject", "Reply-To",
                                              "Message-ID"), recipient="gone@example.org"))
    # 2: only the original Message-ID (a server that returns a few headers).
    moved = sent["moved@example.org"]
    await env.deliver(dsn(env.bot, headers_of(moved, "Message-ID"),
                          recipient="moved@example.org", status="5.1.6"))
    # 3: a delay notice is not a failure.
    slow = sent["slow@example.org"]
    await env.deliver(dsn(env.bot, headers_of(slow, "Subject", "Message-ID"),
                          recipient="slow@example.org", action="delayed", status="4.4.1"))
    await env.settle()

    rows = {r.email: r for r in await env.rows(invitations)}
    assert rows["gone@example.org"].status == "undeliverable"
    assert "5.1.1" in rows["gone@example.org"].undeliverable_reason
    assert rows["moved@example.org"].status == "undeliverable"
    assert "5.1.6" in rows["moved@example.org"].undeliverable_reason
    assert rows["slow@example.org"].status == "sent"
    assert rows["slow@example.org"].undeliverable_at is None
    unreachable = {r.channel_user_id: r.unreachable for r in await env.rows(addresses)}
    assert unreachable == {"gone@example.org": True, "moved@example.org": True,
                           "slow@example.org": False}
    kept = await env.rows(inbound_messages)
    assert len(kept) == 3 and {r.status for r in kept} == {"ignored"}
    notes = sorted(r.reason for r in kept)
    assert sum(f"invitation {ids['gone@example.org']} undeliverable" in n for n in notes) == 1
    assert sum(f"invitation {ids['moved@example.org']} undeliverable" in n for n in notes) == 1
    assert len(env.smtp.messages) == 3  # no bounce was answered
    async with app.db.connect() as conn:
        mids = dict((await conn.execute(select(invitations.c.email, invitations.c.message_id)
                                        )).all())
    assert mids["moved@example.org"] == moved["Message-ID"]
