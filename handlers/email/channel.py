"""The email channel: IMAP in, one form inbound per message, replies out through the outbox.

For every fetched message, in this order: parse (pure), read the reply into one
`Inbound(kind="form")` (form_reader.py: numbered answers, command words), hand it to the
service, whose turn the engine runs and records with the raw bytes (or record it as an
unprocessed message), and only then report its UID as done so the watcher flags and moves
it. Mail that is not from a person (auto-replies, bounces, read receipts, lists, our own)
is recorded and never answered. Replies are rendered when sent (form_render.py, render.py).

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
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bot.language import normalize_language_tag
from bot.mailstore import MailStore
from bot.messages import Inbound
from bot.outbox import OutboxDispatcher, OutboxItem
from bot.replycap import UNVERIFIED, ReplyBudget, start_of_day

from .authres import verified_from
from .bounces import note_bounce
from .form_reader import FormReader
from .imap import Fetched, ImapConfig, ImapWatcher
from .opt_out import invited_by, opt_out_by_mail
from .outgoing import MailComposer, reply_subject, thread_of
from .parsing import ParsedMail, parse_message
from .rawmail import decode_raw, encode_raw
from .render import Doc, render_text
from .smtp import SmtpConfig, SmtpSender
from .tokens import TokenClaims, verify_token
from .unsubscribe import unsubscribe_request, unsubscribe_words

if TYPE_CHECKING:
    from bot.config import Settings
    from bot.engine import Engine
    from bot.i18n import Translations
    from bot.language import LanguageDetector
    from bot.leaders import Leaders, Leadership
    from bot.service import ConversationService

logger = logging.getLogger(__name__)

CHANNEL = "email"
_KINDS = {
    "form": "question",
    "digest": "question",
    "review": "review",
    "receipt": "receipt",
    "notice": "info",
}
_MAX_FAILURES = 5  # a message that keeps failing is recorded as failed and moved on


@dataclass(frozen=True)
class _Known:
    """What a batch read in one transaction about the sender of one of its messages, before
    any of its turns: their report's state (None: none) and today's reply counts. Only for a
    sender with no earlier message still in flight, and only that sender's first message in
    the batch uses it (it is read when the per-message reads would have been queued)."""

    state: dict[str, Any] | None
    counts: list[tuple[str, str | None, int]]


def _header_block(raw: bytes) -> bytes:
    ends = [i for i in (raw.find(b"\r\n\r\n"), raw.find(b"\n\n")) if i >= 0]
    return raw[: min(ends) + 2] if ends else raw[:65_536]


class EmailChannel:
    """`capbot serve` starts it when CAPBOT_IMAP_HOST and CAPBOT_SMTP_HOST are set."""

    name = CHANNEL

    def __init__(
        self,
        *,
        service: ConversationService,
        settings: Settings,
        translations: Translations,
        engines: dict[str, Engine],
        default_questionnaire: str,
        detector: LanguageDetector,
        database: Any,  # storage's Database: the outbox and MailStore run on it
        leaders: Leaders,
    ) -> None:
        """Given what it uses, not the whole App (bot/server.py email_channel builds it)."""
        s = settings
        s.check_email()
        assert s.imap_host and s.smtp_host and s.email_from and s.secret_key
        self.service = service
        self.database = database
        self.leaders = leaders
        self.detector = detector
        self.default_questionnaire = default_questionnaire  # its id: for new respondents
        self.store = MailStore(database, CHANNEL)
        self.secret = s.secret_key.encode("utf-8")
        self.max_bytes = s.email_max_bytes
        tr = translations
        self.unsubscribe_words = unsubscribe_words(
            {lang: tr.raw(lang, "mail_word_unsubscribe") for lang in tr.languages}
        )
        self.budget = ReplyBudget(s.email_daily_reply_cap)
        self.unverified_budget = ReplyBudget(s.email_unverified_reply_cap)
        self.trusted_authserv = (s.email_trust_auth_results or "").strip() or None
        self.sender = SmtpSender(
            SmtpConfig(
                host=s.smtp_host,
                port=s.smtp_port,
                security=s.smtp_security,
                user=s.smtp_user,
                password=s.smtp_password,
                cafile=s.smtp_cafile,
                timeout=s.smtp_timeout,
                connections=s.smtp_connections,
            )
        )
        self.composer = MailComposer(
            secret=self.secret, email_from=s.email_from, from_name=s.email_from_name,
            engines=engines, default_questionnaire=default_questionnaire, smtp=self.sender)
        c = self.composer
        self.from_address, self.local, self.domain = c.from_address, c.local, c.domain
        self.renderers = c.renderers
        self.readers = {qid: FormReader(r) for qid, r in self.renderers.items()}
        # Mail may wait out a long SMTP outage: ~20 attempts, backing off to 10 minutes.
        self.dispatcher = OutboxDispatcher(
            database,
            CHANNEL,
            self.composer.send,
            on_unreachable=self._unreachable,
            max_attempts=20,
            max_delay=600.0,
            lease=s.outbox_lease_seconds,
            sweep_interval=s.outbox_sweep_seconds,
        )
        self.watcher = ImapWatcher(
            ImapConfig(
                host=s.imap_host,
                port=s.imap_port,
                user=s.imap_user or "",
                password=s.imap_password or "",
                security=s.imap_security,
                folder=s.imap_folder,
                processed_folder=s.imap_processed_folder,
                cafile=s.imap_cafile,
                idle_seconds=s.imap_idle_seconds,
                poll_seconds=s.imap_poll_seconds,
                use_idle=None if s.imap_use_idle else False,
                max_bytes=s.email_max_bytes,
            ),
            self.handle_batch,
        )
        self._ingest: Leadership | None = None
        self._failures: dict[str, int] = {}
        self._intake = asyncio.Lock()
        self._tails: dict[str, asyncio.Future] = {}  # sender -> their latest message's turn
        self.processed = 0  # messages recorded (tests and the benchmark wait on it)

    # -- life cycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        await self._seed_budget()
        self.service.on_outbox(self.dispatcher.enqueue)
        await self.dispatcher.start()  # mail left pending by a crash goes first
        # Every replica sends mail; one at a time reads this mailbox (bot/leaders.py).
        self._ingest = await self.leaders.run(self.watcher.job_name, self.watcher.as_job)

    async def stop(self) -> None:
        if self._ingest is not None:
            await self._ingest.stop()
            self._ingest = None
        await self.dispatcher.stop()
        await self.sender.close()

    async def _seed_budget(self) -> None:
        for address, kind, count in await self.store.reply_counts_since(start_of_day()):
            budget = self.unverified_budget if kind == UNVERIFIED else self.budget
            budget.counts[address] += count

    async def _count_replies(self, *addresses: str | None) -> None:
        """Today's replies to these addresses as the database counts them, so that the cap
        holds across restarts and replicas (the in-memory counts are only a cache)."""
        wanted = [a for a in dict.fromkeys(addresses) if a]
        if wanted:
            self._set_counts(wanted, await self.store.reply_counts_for(wanted, start_of_day()))

    def _set_counts(self, wanted: list[str], rows: list[tuple[str, str | None, int]]) -> None:
        for budget, unverified in ((self.budget, False), (self.unverified_budget, True)):
            for address in wanted:
                budget.counts[address] = sum(
                    n for a, kind, n in rows if a == address and (kind == UNVERIFIED) == unverified
                )

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
        known = await self._read_senders(items)

        async def run(
            fetched: Fetched,
            mail: ParsedMail,
            key: str,
            previous: asyncio.Future | None,
            done: asyncio.Future,
        ) -> bool:
            try:
                if previous is not None:
                    await asyncio.wait([previous])
                return await self._process(fetched, mail, known.get(id(fetched)))
            finally:
                done.set_result(None)
                if self._tails.get(key) is done:
                    del self._tails[key]

        results = await asyncio.gather(*(run(*item) for item in items))
        return [item[0].uid for item, ok in zip(items, results, strict=True) if ok]

    async def _read_senders(self, items: list[tuple]) -> dict[int, _Known]:
        """One read for the batch instead of two per message: the report state and today's
        reply counts of each sender whose previous message is done, for their first message
        here (id(fetched) -> what was read). On failure, each message reads its own."""
        first: dict[str, Fetched] = {}
        for fetched, mail, key, previous, _ in items:
            if (
                previous is None
                and mail.from_address == key
                and mail.classification.kind == "normal"
            ):
                first.setdefault(key, fetched)
        if not first:
            return {}
        try:
            states, rows = await self.store.senders_today(list(first), start_of_day())
        except Exception:
            logger.exception("reading %d senders at once failed; one by one", len(first))
            return {}
        counts: dict[str, list[tuple[str, str | None, int]]] = {a: [] for a in first}
        for row in rows:
            counts[row[0]].append(row)
        return {
            id(fetched): _Known(states.get(address), counts[address])
            for address, fetched in first.items()
        }

    async def process_raw(self, raw: bytes) -> bool:
        """Process one message outside IMAP (tests, tools); True when it was recorded."""
        return await self._process(
            Fetched(0, raw, len(raw)), parse_message(raw, max_bytes=self.max_bytes)
        )

    async def _process(
        self, fetched: Fetched, mail: ParsedMail, known: _Known | None = None
    ) -> bool:
        try:
            recorded = await self._process_one(fetched, mail, known)
        except Exception as exc:
            count = self._failures[mail.message_id] = self._failures.get(mail.message_id, 0) + 1
            logger.exception(
                "email %s from %s failed (%d)", mail.message_id, mail.from_address, count
            )
            if count < _MAX_FAILURES:
                return False  # stays in the folder; tried again later
            return await self._quarantine(fetched, mail, f"{type(exc).__name__}: {exc}")
        self._failures.pop(mail.message_id, None)
        self.processed += 1
        return recorded

    async def _process_one(self, fetched: Fetched, mail: ParsedMail, known: _Known | None) -> bool:
        sender = mail.from_address
        kind = mail.classification.kind
        if kind != "normal":
            logger.info(
                "not answering %s from %s: %s (%s)",
                mail.message_id,
                sender,
                kind,
                mail.classification.reason,
            )
            note = await note_bounce(self, fetched.raw) if kind == "bounce" else ""
            await self._record(
                fetched,
                mail,
                status="ignored",
                reason=f"{kind}: {mail.classification.reason}{note}",
            )
            return True
        if self._is_own(sender):
            await self._record(fetched, mail, status="ignored", reason="own_mail: our address")
            return True
        if mail.too_large or fetched.size > self.max_bytes:
            await self._record(
                fetched,
                mail,
                status="rejected",
                reason=f"too large: {fetched.size} bytes (headers kept)",
                notice=(
                    "mail_too_large",
                    {"size": _size(fetched.size), "limit": _size(self.max_bytes)},
                ),
            )
            return True
        unsubscribe = unsubscribe_request(mail.subject, mail.reply_text, self.unsubscribe_words)
        if unsubscribe is not None:
            await opt_out_by_mail(self, fetched, mail, unsubscribe.language, unsubscribe.token)
            return True
        owner, delegate = sender, None
        claims: TokenClaims | None = None
        invited = await invited_by(self, mail)  # replying to an invitation: its person
        if invited is not None and invited[1]:
            owner = invited[1]
            delegate = sender if sender != owner else None
        elif mail.token:
            claims = verify_token(self.secret, mail.token, int(time.time()))
            if claims is not None and not claims.matches_address(sender):
                owner = await self.store.owner_of(claims.ref)
                delegate = sender
            if claims is None or owner is None:
                await self._record(
                    fetched,
                    mail,
                    status="rejected",
                    reason="reply token forged, expired or unknown",
                    notice=("mail_bad_token", {}),
                )
                return True
        if owner != sender:
            known = None  # read for the sender, not for the report's owner
        state = known.state if known is not None else await self.store.report_state(owner)
        draft = state if _begun(state) else None
        if delegate is None and invited is None:  # an invitation token is proof too
            why = self._unproven(mail, claims, draft)
            if draft is not None and why is not None:
                # Not shown to be the owner's: nothing changes. The owner gets a notice with
                # a fresh token, so a genuine mail costs one more reply, a forged one nothing.
                logger.info("email %s from %s changes nothing: %s", mail.message_id, sender, why)
                await self._record(
                    fetched,
                    mail,
                    status="rejected",
                    reason=f"unverified: {why}",
                    doc=self.composer.renderer(draft).verify_doc(draft),
                    ref=draft["ref"],
                )
                return True
        if known is not None:
            self._set_counts([sender], known.counts)
        else:
            await self._count_replies(sender, owner)
        muted = self.budget.muted({sender, owner})
        if sender in muted:
            log = logger.warning if self.budget.first_refusal(sender) else logger.info
            log("daily reply cap reached for %s: recording without answering", sender)
        text = mail.reply_text or mail.subject
        reader = (
            self.readers.get((state or {}).get("questionnaire"))
            or self.readers[self.default_questionnaire]
        )
        entries, commands = reader.inbound_fields(text, mail.subject)
        detection = None
        if state is None or (
            not state.get("lang_explicit") and state.get("phase") in ("new", "language")
        ):
            detection = self.detector.detect(text)  # the first mail's language
        thread = thread_of(mail)
        inbound = Inbound(
            CHANNEL,
            owner,
            mail.message_id,
            "form",
            text=text,
            language_hint=mail.content_language,
            display_name=(mail.from_name or None) if not delegate else None,
            raw=encode_raw(fetched.raw),
            entries=entries,
            commands=commands,
            delegate=delegate,
            muted=muted,
            reply_path={"thread": thread},
            detection=detection,
        )
        result = await self.service.handle(inbound)
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

    def _unproven(
        self, mail: ParsedMail, claims: TokenClaims | None, report: dict[str, Any] | None
    ) -> str | None:
        """Why mail from the owner's own address may not change report; None when it may."""
        if report is None:
            return None  # nothing to protect: a new report starts
        if claims is not None:
            if claims.ref == report["ref"]:
                return None
            return f"reply token is for report {claims.ref}, not {report['ref']}"
        why = f"no reply token for report {report['ref']}"
        if self.trusted_authserv:
            method = verified_from(mail.auth_results, self.trusted_authserv, mail.from_address)
            if method:
                logger.info(
                    "email %s from %s: no reply token, From proven by %s (%s)",
                    mail.message_id,
                    mail.from_address,
                    self.trusted_authserv,
                    method,
                )
                return None
            why += f", and no aligned DMARC/DKIM/SPF pass from {self.trusted_authserv}"
        return why

    async def _record(
        self,
        fetched: Fetched,
        mail: ParsedMail,
        *,
        status: str,
        reason: str,
        notice: tuple[str, dict[str, Any]] | None = None,
        doc: Doc | None = None,
        ref: str | None = None,
    ) -> bool:
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
            doc = self.composer.renderer(None).notice_doc(lang, notice[0], **notice[1])
        if doc and mail.can_reply and sender:
            await self._count_replies(sender)
        if doc and mail.can_reply and sender and self.unverified_budget.allows(sender):
            thread = thread_of(mail)
            payload = {
                "text": render_text(doc),
                "kind": _KINDS.get(doc.kind, "info"),
                "language": doc.language,
                "ref": ref,
                "to": None,
                **self.composer.envelope(doc, thread, reply=True, index=0),
                "cap": UNVERIFIED,
            }
            items.append((sender, payload))
        elif doc and mail.can_reply and sender:
            log = logger.warning if self.unverified_budget.first_refusal(sender) else logger.info
            log(
                "daily cap of notices to unverified mail reached for %s: recording without "
                "answering",
                sender,
            )
        created = await self.store.record_with_notices(
            message_id=mail.message_id,
            user_id=sender or None,
            payload=encode_raw(raw),
            status=status,
            reason=reason,
            notices=items,
            now=self.service.clock(),
        )
        if created:
            self.unverified_budget.spend(item.address for item in created)
            self.dispatcher.enqueue(created)
        return created is not None

    async def _quarantine(self, fetched: Fetched, mail: ParsedMail, reason: str) -> bool:
        try:
            await self._record(fetched, mail, status="failed", reason=reason[:2000])
        except Exception:
            logger.exception("cannot even record %s; leaving it in the folder", mail.message_id)
            return False
        self._failures.pop(mail.message_id, None)
        return True

    def _notice_language(self, mail: ParsedMail) -> str:
        hinted = normalize_language_tag(mail.content_language)
        if hinted:
            return hinted
        found = self.detector.detect(mail.reply_text or mail.subject)
        return found.language if found.confident and found.language else "en"

    async def _unreachable(self, item: OutboxItem, why: str) -> None:
        logger.warning(
            "email to %s refused permanently: %s", item.payload.get("to") or item.address, why
        )


def _begun(state: dict[str, Any] | None) -> bool:
    """Whether a report has begun (a first mail starts one; until then nothing to protect)."""
    return bool(
        state and state.get("ref") and (state.get("phase") != "new" or state.get("answers"))
    )


def _size(n: int) -> str:
    return f"{n / 1_000_000:.1f} MB" if n >= 100_000 else f"{max(1, n // 1000)} kB"


__all__ = ["CHANNEL", "EmailChannel", "ReplyBudget", "decode_raw", "encode_raw", "reply_subject"]
