"""The email channel: IMAP in, one email turn per message, replies out through the outbox.

For every fetched message, in this order: parse (pure), record it in the database with its
raw bytes (through the service's turn, or as an unprocessed message), and only then report
its UID as done so the watcher flags and moves it. Mail that is not from a person
(auto-replies, bounces, read receipts, lists, our own) is recorded and never answered.

`From` is easy to forge, so once an address has a report, only mail that proves it came
through our mail changes it: a valid reply token for that report (plus-address or subject
tag), or, when CAPBOT_EMAIL_TRUST_AUTH_RESULTS names our receiving server, its aligned
DMARC/DKIM/SPF pass (authres.py). Other mail from that address changes nothing; it is kept
as "rejected" with the reason, and the address gets one short notice with a fresh token.

Loop guard: at most `email_daily_reply_cap` replies go to one address per UTC day for mail
that passed, and `email_unverified_reply_cap` for the notices to mail that did not, counted
apart so that forged mail can neither use up a person's replies nor flood them.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import hmac
import logging
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select
from sqlalchemy.engine import Connection

from bot.engine import Engine, Turn
from bot.form import Doc, MailForm, bare_subject
from bot.language import normalize_language_tag
from bot.messages import Inbound, Reply
from bot.outbox import OutboxDispatcher, OutboxItem
from storage import repository as repo
from storage.models import outbox, respondents, submissions

from .authres import verified_from
from .imap import Fetched, ImapConfig, ImapWatcher
from .parsing import ParsedMail, normalize_address, parse_message
from .render import build_message, format_address, render_html, render_text
from .smtp import SmtpConfig, SmtpSender
from .tokens import TokenClaims, make_token, verify_token

if TYPE_CHECKING:
    from bot.app import App

logger = logging.getLogger(__name__)

CHANNEL = "email"
RAW_BASE64_MARKER = "=?capbot-base64?=\n"
_KINDS = {"form": "question", "digest": "question", "review": "review", "receipt": "receipt",
          "notice": "info"}
_MAX_FAILURES = 5  # a message that keeps failing is recorded as failed and moved on


def encode_raw(raw: bytes) -> str:
    """Raw message bytes as text for inbound_messages.payload, without loss.

    UTF-8 without NUL (7-bit MIME included, so nearly all mail) is stored as it is, readable
    in the database; anything else (8-bit legacy charsets, NUL, which PostgreSQL text
    refuses) is stored as a marker line and base64. The marker cannot begin a real message:
    its first line has no colon, so it is not a header.
    """
    if b"\x00" not in raw:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            pass
        else:
            if not text.startswith(RAW_BASE64_MARKER):
                return text
    return RAW_BASE64_MARKER + base64.encodebytes(raw).decode("ascii")


def decode_raw(payload: str) -> bytes:
    """The raw bytes stored by encode_raw."""
    if payload.startswith(RAW_BASE64_MARKER):
        return base64.decodebytes(payload[len(RAW_BASE64_MARKER):].encode("ascii"))
    return payload.encode("utf-8")


def _header_block(raw: bytes) -> bytes:
    ends = [i for i in (raw.find(b"\r\n\r\n"), raw.find(b"\n\n")) if i >= 0]
    return raw[: min(ends) + 2] if ends else raw[:65_536]


def _angle(message_id: str | None) -> str | None:
    return f"<{message_id.strip('<>')}>" if message_id else None


def reply_subject(theirs: str, ours: str) -> str:
    """ "Re: <their subject>", one prefix and no old [ref:…] tag; ours when theirs is empty."""
    subject = bare_subject(theirs)
    return f"Re: {subject}" if subject else ours


class ReplyBudget:
    """Replies sent to each address this UTC day; seeded from the outbox at start-up."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.day = datetime.now(UTC).date()
        self.counts: dict[str, int] = defaultdict(int)
        self.refused: set[str] = set()  # addresses told about in the log today

    def _roll(self) -> None:
        today = datetime.now(UTC).date()
        if today != self.day:
            self.day, self.counts, self.refused = today, defaultdict(int), set()

    def first_refusal(self, address: str) -> bool:
        """True the first time today that address is over the cap (log it once, not per mail)."""
        self._roll()
        if address in self.refused:
            return False
        self.refused.add(address)
        return True

    def allows(self, address: str) -> bool:
        self._roll()
        return self.counts.get(address, 0) < self.cap

    def spend(self, addresses: Iterable[str]) -> None:
        self._roll()
        for address in addresses:
            self.counts[address] += 1


UNVERIFIED = "unverified"  # payload["cap"] of replies counted on the unverified budget


@dataclass(slots=True)
class _Context:
    """What the email turn needs besides the engine's inputs (fixed before the turn runs)."""

    mail: ParsedMail
    delegate: str | None
    allowed: frozenset[str]  # recipients still under today's reply cap
    subject: str = ""


class EmailChannel:
    """`capbot serve` starts it when CAPBOT_IMAP_HOST and CAPBOT_SMTP_HOST are set."""

    name = CHANNEL

    def __init__(self, app: App) -> None:
        s = app.settings
        s.check_email()
        assert s.imap_host and s.smtp_host and s.email_from and s.secret_key
        self.app = app
        self.service = app.service
        self.secret = s.secret_key.encode("utf-8")
        self.from_address = normalize_address(s.email_from)
        if not self.from_address:
            raise ValueError(f"CAPBOT_EMAIL_FROM is not an address: {s.email_from!r}")
        local, _, self.domain = self.from_address.rpartition("@")
        self.local = local.split("+", 1)[0]
        self.from_header = format_address(s.email_from_name, self.from_address)
        self.max_bytes = s.email_max_bytes
        self.forms = {qid: MailForm(engine) for qid, engine in app.engines.items()}
        self.budget = ReplyBudget(s.email_daily_reply_cap)
        self.unverified_budget = ReplyBudget(s.email_unverified_reply_cap)
        self.trusted_authserv = (s.email_trust_auth_results or "").strip() or None
        self.sender = SmtpSender(SmtpConfig(
            host=s.smtp_host, port=s.smtp_port, security=s.smtp_security, user=s.smtp_user,
            password=s.smtp_password, cafile=s.smtp_cafile, timeout=s.smtp_timeout,
            connections=s.smtp_connections))
        # Mail may wait out a long SMTP outage: ~20 attempts, backing off to 10 minutes.
        self.dispatcher = OutboxDispatcher(app.database, CHANNEL, self._send,
                                           on_unreachable=self._unreachable, max_attempts=20,
                                           max_delay=600.0,
                                           lease=app.settings.outbox_lease_seconds)
        self.watcher = ImapWatcher(ImapConfig(
            host=s.imap_host, port=s.imap_port, user=s.imap_user or "",
            password=s.imap_password or "", security=s.imap_security, folder=s.imap_folder,
            processed_folder=s.imap_processed_folder, cafile=s.imap_cafile,
            idle_seconds=s.imap_idle_seconds, poll_seconds=s.imap_poll_seconds,
            use_idle=None if s.imap_use_idle else False, max_bytes=s.email_max_bytes),
            self.handle_batch)
        self._failures: dict[str, int] = {}
        self._intake = asyncio.Lock()
        self._tails: dict[str, asyncio.Future] = {}  # sender -> their latest message's turn
        self.processed = 0  # messages recorded (tests and the benchmark wait on it)

    # -- life cycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        await self._seed_budget()
        self.service.on_outbox(self.dispatcher.enqueue)
        await self.dispatcher.start()  # mail left pending by a crash goes first
        self.watcher.start()

    async def stop(self) -> None:
        await self.watcher.stop()
        await self.dispatcher.stop()
        await self.sender.close()

    async def _seed_budget(self) -> None:
        start = datetime.combine(datetime.now(UTC).date(), datetime.min.time(), UTC)
        cap = outbox.c.payload["cap"].as_string()
        stmt = (select(outbox.c.address, cap, func.count()).where(
            outbox.c.channel == CHANNEL, outbox.c.created_at >= start)
            .group_by(outbox.c.address, cap))
        async with self.app.db.connect() as conn:
            for address, kind, count in await conn.execute(stmt):
                budget = self.unverified_budget if kind == UNVERIFIED else self.budget
                budget.counts[address] += count

    # -- inbound -------------------------------------------------------------------------------

    async def handle_batch(self, messages: list[Fetched]) -> list[int]:
        """Record a batch; the UIDs returned are committed and may be moved.

        Batches may overlap. Each message waits for the previous one from the same sender
        (across batches, in arrival order); different senders go concurrently, and the
        service commits their turns together.
        """
        loop = asyncio.get_running_loop()
        items = []
        async with self._intake:  # parse and queue in arrival order, one batch at a time
            for i, fetched in enumerate(messages):
                mail = parse_message(fetched.raw, max_bytes=self.max_bytes)
                key = mail.from_address or f"uid:{fetched.uid}"
                done: asyncio.Future = loop.create_future()
                items.append((fetched, mail, key, self._tails.get(key), done))
                self._tails[key] = done
                if i % 16 == 15:
                    await asyncio.sleep(0)  # parsing is CPU work: let replies go out

        async def run(fetched: Fetched, mail: ParsedMail, key: str,
                      previous: asyncio.Future | None, done: asyncio.Future) -> bool:
            try:
                if previous is not None:
                    await asyncio.wait([previous])
                return await self._process(fetched, mail)
            finally:
                done.set_result(None)
                if self._tails.get(key) is done:
                    del self._tails[key]

        results = await asyncio.gather(*(run(*item) for item in items))
        return [item[0].uid for item, ok in zip(items, results, strict=True) if ok]

    async def process_raw(self, raw: bytes) -> bool:
        """Process one message outside IMAP (tests, tools); True when it was recorded."""
        return await self._process(Fetched(0, raw, len(raw)),
                                   parse_message(raw, max_bytes=self.max_bytes))

    async def _process(self, fetched: Fetched, mail: ParsedMail) -> bool:
        try:
            recorded = await self._process_one(fetched, mail)
        except Exception as exc:
            count = self._failures[mail.message_id] = self._failures.get(mail.message_id, 0) + 1
            logger.exception("email %s from %s failed (%d)", mail.message_id,
                             mail.from_address, count)
            if count < _MAX_FAILURES:
                return False  # stays in the folder; tried again later
            return await self._quarantine(fetched, mail, f"{type(exc).__name__}: {exc}")
        self._failures.pop(mail.message_id, None)
        self.processed += 1
        return recorded

    async def _process_one(self, fetched: Fetched, mail: ParsedMail) -> bool:
        sender = mail.from_address
        kind = mail.classification.kind
        if kind != "normal":
            logger.info("not answering %s from %s: %s (%s)", mail.message_id, sender, kind,
                        mail.classification.reason)
            await self._record(fetched, mail, status="ignored",
                               reason=f"{kind}: {mail.classification.reason}")
            return True
        if self._is_own(sender):
            await self._record(fetched, mail, status="ignored", reason="own_mail: our address")
            return True
        if mail.too_large or fetched.size > self.max_bytes:
            await self._record(fetched, mail, status="rejected",
                               reason=f"too large: {fetched.size} bytes (headers kept)",
                               notice=("mail_too_large", {"size": _size(fetched.size),
                                                          "limit": _size(self.max_bytes)}))
            return True
        owner, delegate = sender, None
        claims: TokenClaims | None = None
        if mail.token:
            claims = verify_token(self.secret, mail.token, int(time.time()))
            if claims is not None and not claims.matches_address(sender):
                owner = await self._owner_of(claims.ref)
                delegate = sender
            if claims is None or owner is None:
                await self._record(fetched, mail, status="rejected",
                                   reason="reply token forged, expired or unknown",
                                   notice=("mail_bad_token", {}))
                return True
        if delegate is None:
            draft = await self._report_of(sender)
            why = self._unproven(mail, claims, draft)
            if draft is not None and why is not None:
                # Not shown to be the owner's: nothing changes. The owner gets a notice with
                # a fresh token, so a genuine mail costs one more reply, a forged one nothing.
                logger.info("email %s from %s changes nothing: %s", mail.message_id, sender,
                            why)
                form = self.forms.get(draft.get("questionnaire")) \
                    or self.forms[self.app.questionnaire.id]
                await self._record(fetched, mail, status="rejected", reason=f"unverified: {why}",
                                   doc=form.verify_doc(draft), ref=draft["ref"])
                return True
        allowed = frozenset(a for a in {sender, owner} if self.budget.allows(a))
        if sender not in allowed:
            log = logger.warning if self.budget.first_refusal(sender) else logger.info
            log("daily reply cap reached for %s: recording without answering", sender)
        ctx = _Context(mail, delegate, allowed, mail.subject)
        inbound = Inbound(CHANNEL, owner, mail.message_id, "text",
                          text=mail.reply_text or mail.subject,
                          language_hint=mail.content_language,
                          display_name=(mail.from_name or None) if not delegate else None,
                          raw=encode_raw(fetched.raw))
        result = await self.service.handle(inbound, turn_fn=functools.partial(self._turn,
                                                                              ctx=ctx))
        if result.failed and result.respondent_id is None:
            # The database refused the turn: perhaps nothing is recorded. Leave the message in
            # the folder; the next round processes it, or finds it kept as failed.
            logger.error("email %s could not be committed; will retry", mail.message_id)
            return False
        self.budget.spend(item.payload.get("to") or item.address for item in result.outbox)
        return True

    def _is_own(self, address: str) -> bool:
        if address == self.from_address:
            return True
        local, _, domain = address.rpartition("@")
        return domain == self.domain and local.split("+", 1)[0] == self.local

    async def _report_of(self, address: str) -> dict[str, Any] | None:
        """The conversation state of address's report, if it has begun (else None)."""
        stmt = (select(respondents.c.state)
                .where(respondents.c.channel == CHANNEL,
                       respondents.c.channel_user_id == address).limit(1))
        async with self.app.db.connect() as conn:
            state = (await conn.execute(stmt)).scalar()
        if not state or not state.get("ref"):
            return None
        return state if state.get("phase") != "new" or state.get("answers") else None

    def _unproven(self, mail: ParsedMail, claims: TokenClaims | None,
                  report: dict[str, Any] | None) -> str | None:
        """Why mail from the owner's own address may not change report; None when it may."""
        if report is None:
            return None  # nothing to protect: a new report starts
        if claims is not None:
            if claims.ref == report["ref"]:
                return None
            return f"reply token is for report {claims.ref}, not {report['ref']}"
        why = f"no reply token for report {report['ref']}"
        if self.trusted_authserv:
            method = verified_from(mail.auth_results, self.trusted_authserv,
                                   mail.from_address)
            if method:
                logger.info("email %s from %s: no reply token, From proven by %s (%s)",
                            mail.message_id, mail.from_address, self.trusted_authserv, method)
                return None
            why += f", and no aligned DMARC/DKIM/SPF pass from {self.trusted_authserv}"
        return why

    async def _owner_of(self, ref: str) -> str | None:
        stmt = (select(respondents.c.channel_user_id)
                .select_from(submissions.join(respondents,
                                              submissions.c.respondent_id == respondents.c.id))
                .where(submissions.c.reference == ref, respondents.c.channel == CHANNEL)
                .limit(1))
        async with self.app.db.connect() as conn:
            return (await conn.execute(stmt)).scalar()

    async def _record(self, fetched: Fetched, mail: ParsedMail, *, status: str, reason: str,
                      notice: tuple[str, dict[str, Any]] | None = None,
                      doc: Doc | None = None, ref: str | None = None) -> bool:
        """Keep a message that does not reach the engine; a notice (notice: a catalog key
        and values; or doc, with ref to carry a fresh token for that report) goes in the same
        commit. Such mail is not shown to be its sender's, so the notice is counted on the
        unverified budget."""
        # Oversized mail is kept as its headers only (the whole message stays on the server).
        too_large = mail.too_large or fetched.size > self.max_bytes
        raw = _header_block(fetched.raw) if too_large else fetched.raw
        sender = mail.from_address
        items: list[dict[str, Any]] = []
        if notice and doc is None:
            lang = self._notice_language(mail)
            form = self.forms[self.app.questionnaire.id]
            doc = form.notice_doc(lang, notice[0], **notice[1])
        if doc and mail.can_reply and sender and self.unverified_budget.allows(sender):
            reply = self._reply(doc, mail=mail, to=None, reply=True, ref=ref, index=0)
            items.append({"channel": CHANNEL, "address": sender,
                          "payload": {**_payload(reply), "cap": UNVERIFIED}})
        elif doc and mail.can_reply and sender:
            log = logger.warning if self.unverified_budget.first_refusal(sender) else logger.info
            log("daily cap of notices to unverified mail reached for %s: recording without "
                "answering", sender)
        now = self.service.clock()

        def write(conn: Connection) -> list[OutboxItem] | None:
            found = repo.insert_inbound(conn, channel=CHANNEL, message_id=mail.message_id,
                                        user_id=sender or None, kind="text",
                                        payload=encode_raw(raw), status=status,
                                        reason=reason, now=now)
            if found is None:
                return None  # seen before
            return self.service.add_outbox(conn, items, now) if items else []

        created = await self.app.database.transaction(write)
        if created:
            self.unverified_budget.spend(item.address for item in created)
            self.dispatcher.enqueue(created)
        return created is not None

    async def _quarantine(self, fetched: Fetched, mail: ParsedMail, reason: str) -> bool:
        try:
            await self._record(fetched, mail, status="failed", reason=reason[:2000])
        except Exception:
            logger.exception("cannot even record %s; leaving it in the folder",
                             mail.message_id)
            return False
        self._failures.pop(mail.message_id, None)
        return True

    def _notice_language(self, mail: ParsedMail) -> str:
        hinted = normalize_language_tag(mail.content_language)
        if hinted:
            return hinted
        found = self.app.detector.detect(mail.reply_text or mail.subject)
        return found.language if found.confident and found.language else "en"

    # -- the turn (runs inside the service's transaction: pure, no I/O) -------------------------

    def _turn(self, engine: Engine, state: dict, inbound: Inbound, now: datetime,
              detection: Any, *, ctx: _Context) -> Turn:
        form = self.forms.get(engine.qn.id) or MailForm(engine)
        mt = form.handle(state, inbound.text, now, detection, hint=inbound.language_hint,
                         subject=ctx.subject, delegate=ctx.delegate)
        replies: list[Reply] = []
        for index, out in enumerate(mt.mails):
            recipient = out.to or inbound.user_id
            if recipient not in ctx.allowed:
                continue  # over today's cap: the answers are kept, no reply
            replies.append(self._reply(out.doc, mail=ctx.mail, to=out.to, reply=out.reply,
                                       ref=mt.turn.state["ref"], index=index))
        mt.turn.replies = replies
        return mt.turn

    def _reply(self, doc: Doc, *, mail: ParsedMail, to: str | None, reply: bool,
               ref: str | None, index: int) -> Reply:
        subject = doc.subject
        extra: dict[str, Any] = {"ref": ref, "to": to}
        if reply:
            if doc.kind not in ("form", "verify"):  # verify: not the subject of a forgery
                subject = reply_subject(mail.subject, doc.subject)
            if not mail.message_id_synthesized:
                extra["in_reply_to"] = mail.message_id
                extra["references"] = [*mail.references[-10:], mail.message_id]
        extra["subject"] = subject
        extra["html"] = render_html(doc)
        # A Message-ID fixed now survives retries and restarts (receivers can de-duplicate).
        digest = hashlib.sha256(f"{mail.message_id}\0{index}".encode()).hexdigest()[:24]
        extra["mid"] = f"capbot.{digest}@{self.domain}"
        return Reply(render_text(doc), _KINDS.get(doc.kind, "info"), doc.language,  # type: ignore[arg-type]
                     extra=extra)

    # -- outbound ------------------------------------------------------------------------------

    async def _send(self, item: OutboxItem) -> None:
        p = item.payload
        to = p.get("to") or item.address
        ref = p.get("ref")
        subject = p.get("subject") or self._default_subject(p.get("language") or "en")
        reply_to = None
        if ref:
            # Bound to the report's owner: a delegate's reply then stays a delegate's reply.
            token = make_token(self.secret, ref, item.address, int(time.time()))
            subject = f"{subject} [ref:{token}]"
            reply_to = f"{self.local}+{token}@{self.domain}"
        mid = p.get("mid") or "capbot.{}.{}@{}".format(
            item.id, hmac.new(self.secret, str(item.id).encode(), "sha256").hexdigest()[:12],
            self.domain)
        data = build_message(
            from_addr=self.from_header, to=to, subject=subject, text=p.get("text", ""),
            html_body=p.get("html"), message_id=f"<{mid}>", reply_to=reply_to,
            in_reply_to=_angle(p.get("in_reply_to")),
            references=[r for r in map(_angle, p.get("references") or []) if r],
            language=p.get("language"))
        await self.sender.send(self.from_address, [to], data)

    def _default_subject(self, lang: str) -> str:
        form = self.forms[self.app.questionnaire.id]
        return form.tr.raw(lang, "title", form.qn.id)

    async def _unreachable(self, item: OutboxItem, why: str) -> None:
        logger.warning("email to %s refused permanently: %s", item.payload.get("to")
                       or item.address, why)


def _payload(reply: Reply) -> dict[str, Any]:
    from bot.service import reply_to_payload

    return reply_to_payload(reply)


def _size(n: int) -> str:
    return f"{n / 1_000_000:.1f} MB" if n >= 100_000 else f"{max(1, n // 1000)} kB"


__all__ = ["CHANNEL", "EmailChannel", "ReplyBudget", "decode_raw", "encode_raw",
           "reply_subject"]
