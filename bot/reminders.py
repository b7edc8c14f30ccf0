"""The rules of a reporting round's reminders (pure): who is due one, on which channel, when,
and what it says.

A respondent invited to a round with a deadline is due a reminder when they have not
submitted, have not opted out, their invitation reached them, fewer than `max_reminders`
were sent, the last was at least `interval` ago, the deadline has not passed and it is not
night (quiet hours) where they live. The reminder goes to the channel they answered on last,
to email when that is Telegram and their chat is unreachable (they blocked the bot).

Where they live comes from their country: tzdata's zone.tab gives each country's zones, the
first line of a country being its main zone except for the few overridden below (the
capital's or most populous zone); an unknown country means UTC.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from importlib import resources
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from bot.countries import EU, country_table
from bot.i18n import LANGUAGES, Translations, long_date
from bot.rules import Rules

logger = logging.getLogger(__name__)

DOMAIN = "remind"
UTC_ZONE = ZoneInfo("UTC")
# zone.tab lists a country's zones west to east or by region; where its first zone is not
# where most people live (or the capital), the main one is named here.
MAIN_ZONE = {
    "au": "Australia/Sydney", "br": "America/Sao_Paulo", "ca": "America/Toronto",
    "ru": "Europe/Moscow", "ua": "Europe/Kyiv", "uz": "Asia/Tashkent",
    "fm": "Pacific/Pohnpei", "ki": "Pacific/Tarawa", "kz": "Asia/Almaty",
    EU: "Europe/Brussels",
}
# Why a respondent gets no reminder now (the dry run lists them; stats count some).
SUBMITTED, OPTED_OUT, UNDELIVERABLE = "submitted", "opted_out", "undeliverable"
NOT_INVITED, NO_DEADLINE, PAST_DEADLINE = "not_invited", "no_deadline", "past_deadline"
MAX_REACHED, TOO_SOON, QUIET_HOURS = "max_reached", "too_soon", "quiet_hours"
NO_ADDRESS = "no_address"


@dataclass(frozen=True, slots=True)
class Policy:
    max_reminders: int = 3
    interval: timedelta = timedelta(days=7)
    quiet_start: int = 20  # local hour quiet hours begin
    quiet_end: int = 8  # local hour they end

    def quiet(self, local: datetime) -> bool:
        start, end, hour = self.quiet_start, self.quiet_end, local.hour
        if start == end:
            return False  # "0-0": no quiet hours
        return start <= hour < end if start < end else hour >= start or hour < end


def parse_quiet_hours(text: str) -> tuple[int, int]:
    """ "20-08" -> (20, 8): local hours from which to which nothing is sent."""
    try:
        start, end = (int(part) for part in text.strip().split("-"))
    except ValueError:
        raise ValueError(f"expected START-END in whole hours, such as 20-08; got {text!r}"
                         ) from None
    if not (0 <= start <= 23 and 0 <= end <= 23):
        raise ValueError(f"hours are 0 to 23; got {text!r}")
    return start, end


@dataclass(slots=True)
class Candidate:
    """One invitation of a round and what is known of its respondent, as the store reads it."""

    invitation_id: int
    respondent_id: int
    round_id: int
    deadline: date | None
    invitation_status: str  # pending | sent | undeliverable
    language: str  # the invitation's
    email: str  # the invitation's address
    reminders_sent: int
    last_reminder_at: datetime | None
    invited_at: datetime | None  # when the invitation went out
    opted_out_at: datetime | None
    submitted: bool  # a version of the report was submitted
    state: dict[str, Any]
    country: str | None  # ISO alpha-3 (or alpha-2), or "eu"
    last_channel: str | None
    # channel -> (address, unreachable)
    addresses: dict[str, tuple[str, bool]] = field(default_factory=dict)
    invitation_message_id: str | None = None


@dataclass(frozen=True, slots=True)
class Due:
    """A reminder to send: where, and in which language."""

    channel: str
    address: str
    language: str
    number: int  # 1 for the first reminder


def time_zone(country: str | None) -> ZoneInfo:
    """The respondent's zone from their country code; UTC when unknown."""
    name = _zones().get(_alpha2(country) or "")
    if not name:
        return UTC_ZONE
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return UTC_ZONE


def _alpha2(country: str | None) -> str | None:
    if not country:
        return None
    code = country.strip().lower()
    if len(code) == 2:
        return code
    return _alpha3_to_2().get(code)


@lru_cache(maxsize=1)
def _alpha3_to_2() -> dict[str, str]:
    return {c.alpha3.lower(): code for code, c in country_table().countries.items() if c.alpha3}


@lru_cache(maxsize=1)
def _zones() -> dict[str, str]:
    """alpha-2 (lower case) -> main zone name, from tzdata's zone.tab."""
    zones: dict[str, str] = {}
    try:
        text = resources.files("tzdata").joinpath("zoneinfo", "zone.tab").read_text("utf-8")
    except (ModuleNotFoundError, OSError) as exc:  # the system's zoneinfo may still work
        logger.warning("tzdata's zone.tab unreadable (%s): only the main zones known", exc)
        text = ""
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) >= 3:
            zones.setdefault(parts[0].lower(), parts[2])
    zones.update(MAIN_ZONE)
    return zones


def why_not(c: Candidate, policy: Policy, now: datetime) -> str | None:
    """Why this respondent gets no reminder now; None when one is due."""
    if c.submitted or c.state.get("phase") == "done":
        return SUBMITTED
    if c.opted_out_at is not None:
        return OPTED_OUT
    if c.invitation_status == "undeliverable":
        return UNDELIVERABLE
    if c.invitation_status != "sent":
        return NOT_INVITED  # the invitation itself has not gone out yet
    if c.deadline is None:
        return NO_DEADLINE
    local = now.astimezone(time_zone(c.country))
    if local.date() > c.deadline:
        return PAST_DEADLINE
    if c.reminders_sent >= policy.max_reminders:
        return MAX_REACHED
    # The first reminder waits the interval after the invitation, the next after the last one.
    last_contact = c.last_reminder_at or c.invited_at
    if last_contact is not None and now - _aware(last_contact) < policy.interval:
        return TOO_SOON
    if policy.quiet(local):
        return QUIET_HOURS
    if channel_for(c) is None:
        return NO_ADDRESS
    return None


def due(c: Candidate, policy: Policy, now: datetime) -> Due | None:
    if why_not(c, policy, now) is not None:
        return None
    channel, address = channel_for(c)  # type: ignore[misc]
    return Due(channel, address, language_of(c), c.reminders_sent + 1)


def channel_for(c: Candidate, *, avoid: str | None = None) -> tuple[str, str] | None:
    """(channel, address): the one answered on last if it is reachable, else email.

    The console is no channel to remind on; nor is `avoid` (a reminder that bounced there).
    """
    def usable(channel: str) -> tuple[str, str] | None:
        found = c.addresses.get(channel)
        if found is None or found[1] or channel == avoid:
            return None
        return channel, found[0]

    if c.last_channel == "telegram":
        chosen = usable("telegram")
        if chosen:
            return chosen
    if avoid != "email":
        email = usable("email")
        if email:
            return email
        if "email" not in c.addresses and c.email:
            return "email", c.email  # invited by mail, never answered yet
    return None


def language_of(c: Candidate) -> str:
    lang = c.state.get("lang") or c.language
    return lang if lang in LANGUAGES else "en"


def questions_left(rules: Rules, state: dict[str, Any]) -> int:
    """Questions that still apply and have no answer (skipped ones count as answered)."""
    answers = state.get("answers") or {}
    return sum(1 for slot in rules.slots(answers) if slot.key not in answers)


def reminder_text(tr: Translations, lang: str, *, left: int, deadline: date,
                  started: bool) -> str:
    """ "4 questions left; the deadline is 1 October 2027." in the respondent's language."""
    when = long_date(deadline, lang)
    lead = tr.t(lang, "lead_started" if started else "lead_new", DOMAIN)
    return lead + "\n" + tr.tn(lang, "left", left, DOMAIN, deadline=when)


def subject(tr: Translations, lang: str, deadline: date) -> str:
    return tr.t(lang, "subject", DOMAIN, deadline=long_date(deadline, lang))


def started(state: dict[str, Any]) -> bool:
    return bool(state.get("answers")) or state.get("phase") not in (None, "new", "language")


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
