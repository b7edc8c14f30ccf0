"""What to export (status, dates, channel, country, questionnaire, labels), checked from text."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from bot.countries import country_table
from bot.i18n import LANGUAGES
from bot.questionnaire import Questionnaire, default_questionnaire
from storage.reads import Selection

STATUSES = ("submitted", "draft", "cancelled", "all")
CHANNELS = ("console", "telegram", "email")


class ExportOptionError(ValueError):
    """A bad export option; `str()` is one line that names the option."""

    def __init__(self, option: str, message: str) -> None:
        super().__init__(f"{option}: {message}")
        self.option = option
        self.message = message


def _parse_when(option: str, text: str, *, end: bool) -> datetime:
    text = text.strip()
    try:
        if len(text) == 10:
            day = date.fromisoformat(text)
            moment = datetime(day.year, day.month, day.day)
            return (moment + timedelta(days=1) if end else moment).replace(tzinfo=UTC)
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ExportOptionError(option, f"{text!r} is not a date (use YYYY-MM-DD)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    moment = moment.astimezone(UTC)
    return moment + timedelta(microseconds=1) if end else moment


def _parse_country(text: str) -> str:
    found = country_table().lookup(text, "en").code if text.strip() else None
    if found is None:
        raise ExportOptionError("--country", f"unknown country {text!r} "
                                "(use an ISO 3166 code such as KE)")
    return found


@dataclass(frozen=True)
class ExportOptions:
    """What to export. `since` is inclusive and `until` exclusive (both UTC, on updated_at);
    build it from strings with `ExportOptions.parse`, which names the bad option."""

    status: str = "submitted"
    since: datetime | None = None
    until: datetime | None = None
    channel: str | None = None
    country: str | None = None  # ISO 3166-1 alpha-2, lower case (as answers store it)
    questionnaire: str | None = None  # None: the default questionnaire
    lang: str | None = None  # adds label columns in this language
    split_multi: bool = False

    @classmethod
    def parse(cls, *, status: str | None = None, since: str | None = None,
              until: str | None = None, channel: str | None = None,
              country: str | None = None, questionnaire: str | None = None,
              lang: str | None = None, split_multi: bool = False) -> ExportOptions:
        """Validate options given as text (command line, chat command)."""
        status = (status or "submitted").strip().lower()
        if status not in STATUSES:
            raise ExportOptionError("--status", f"unknown status {status!r} "
                                    f"(choose {', '.join(STATUSES)})")
        since_at = _parse_when("--since", since, end=False) if since else None
        until_at = _parse_when("--until", until, end=True) if until else None
        if since_at and until_at and until_at <= since_at:
            raise ExportOptionError("--until", "is before --since")
        if channel is not None:
            channel = channel.strip().lower()
            if channel not in CHANNELS:
                raise ExportOptionError("--channel", f"unknown channel {channel!r} "
                                        f"(choose {', '.join(CHANNELS)})")
        if lang is not None:
            lang = lang.strip().lower()
            if lang not in LANGUAGES:
                raise ExportOptionError("--lang", f"unknown language {lang!r} "
                                        f"(choose {', '.join(LANGUAGES)})")
        return cls(status=status, since=since_at, until=until_at, channel=channel,
                   country=_parse_country(country) if country is not None else None,
                   questionnaire=questionnaire.strip() if questionnaire else None,
                   lang=lang, split_multi=bool(split_multi))

    def pick_questionnaire(self, questionnaires: dict[str, Questionnaire]) -> Questionnaire:
        """The questionnaire to export; --country needs one with a question of role country."""
        if self.questionnaire is None:
            qn = default_questionnaire(questionnaires, None)
        elif self.questionnaire not in questionnaires:
            raise ExportOptionError("--questionnaire", f"unknown questionnaire "
                                    f"{self.questionnaire!r} (installed: "
                                    f"{', '.join(sorted(questionnaires))})")
        else:
            qn = questionnaires[self.questionnaire]
        if self.country is not None and qn.by_role("country") is None:
            raise ExportOptionError("--country", f"questionnaire {qn.id} has no question "
                                    "with the role country")
        return qn

    def selection(self, qn: Questionnaire) -> Selection:
        """The submission versions of `qn` these options select, for storage.reads."""
        answer = None
        if self.country is not None:
            holder = qn.by_role("country")
            if holder is None:
                raise ExportOptionError("--country", f"questionnaire {qn.id} has no question "
                                        "with the role country")
            answer = (holder.id, self.country)
        return Selection(questionnaire_id=qn.id, status=self.status, since=self.since,
                         until=self.until, channel=self.channel, answer=answer)
