"""Typed settings from the environment (and .env), validated at start-up with clear errors."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from pydantic_settings.exceptions import SettingsError
from sqlalchemy.engine import make_url


def package_data(package: str) -> Path:
    """Where an installed data package (questionnaires, locales) lies on disk."""
    return Path(str(resources.files(package)))


class ConfigError(Exception):
    """A setting is missing or invalid; the message names the variable."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CAPBOT_", env_file=".env",
                                      env_file_encoding="utf-8", extra="ignore")

    database_url: str = Field("sqlite+aiosqlite:///capbot.db",
                              description="SQLAlchemy async URL; SQLite file in the working dir")
    questionnaire: str | None = Field(None, description="questionnaire id or YAML path")
    questionnaires_dir: Path = Field(default_factory=lambda: package_data("questionnaires"))
    locales_dir: Path = Field(default_factory=lambda: package_data("locales"))
    log_level: str = "INFO"
    # At DEBUG, python-telegram-bot, aioimaplib, httpx… stay at INFO (they log whole updates
    # and mails) unless this is "debug".
    log_libraries: Literal["info", "debug"] = "info"
    # A reply being sent is leased for this long: a restarted process (or another replica)
    # waits that long before sending again a reply whose send may have been cut off by a crash.
    outbox_lease_seconds: float = Field(60.0, gt=0)
    # How often each sender looks for pending replies nobody queued (left by a crash, or by a
    # replica that died: on PostgreSQL those older than a lease).
    outbox_sweep_seconds: float = Field(30.0, gt=0)
    # Several replicas on PostgreSQL: the leader of a singleton job (IMAP ingest, long
    # polling, reminders) checks its lock's connection this often (bot/leaders.py); a
    # takeover after a replica dies takes about 3.5 times this.
    leader_check_seconds: float = Field(2.0, gt=0, le=60)
    spool_path: Path | None = Field(None, description="file keeping messages the database "
                                                      "refused; default: beside the SQLite "
                                                      "file, else ./capbot-spool.jsonl")

    telegram_token: str | None = None
    # The bot's @username: invitation mails link to https://t.me/<username>?start=<token>.
    telegram_bot_username: str | None = Field(None, pattern=r"^@?[A-Za-z][A-Za-z0-9_]{3,31}$")
    telegram_api_url: str | None = Field(None, description="Bot API base URL, e.g. "
                                                           "http://127.0.0.1:8081/bot")
    telegram_admins: Annotated[list[int], NoDecode] = Field(default_factory=list)
    telegram_webhook_url: str | None = None
    telegram_webhook_listen: str = "0.0.0.0"
    telegram_webhook_port: int = 8443
    telegram_webhook_secret: str | None = Field(None, pattern=r"^[A-Za-z0-9_-]{1,256}$")
    # Outbound proxy for the Bot API, e.g. http://user:pass@proxy.example:3128. Without it the
    # standard HTTPS_PROXY / https_proxy (and NO_PROXY) environment variables apply.
    telegram_proxy: str | None = Field(None, pattern=r"^https?://\S+$",
                                       description="http:// or https:// proxy URL for the "
                                                   "Bot API; default: HTTPS_PROXY")
    # Telegram's flood limits: ~30 messages/s per bot (PTB's AIORateLimiter), and about one
    # message per second in a private chat (short bursts allowed). Tests switch them off.
    telegram_rate_limit: bool = True
    telegram_chat_rate: float = Field(1.0, ge=0, description="messages/s per chat; 0 = off")
    telegram_chat_burst: int = Field(3, ge=1)
    # Inbound throttle per chat: past this many updates in this many seconds, updates are
    # recorded (status "throttled") but not answered, after one notice. 30 a minute is an
    # answer every 2 s for a whole minute, faster than anyone reads and answers; and as each
    # turn sends 1-3 messages, replies beyond it could not leave faster than Telegram's ~1
    # message/s per chat anyway. Tests switch it off.
    telegram_inbound_limit: int = Field(30, ge=0, description="updates per window per chat; "
                                                              "0 = no throttle")
    telegram_inbound_window: float = Field(60.0, gt=0, description="seconds")

    # Reminders of a reporting round in `capbot serve` (`capbot remind` runs one by hand):
    # at most `reminder_max` per person, `reminder_interval_days` apart, never during the
    # quiet hours of the person's time zone (local START-END, e.g. 20-08: 20:00 to 08:00).
    reminders: bool = Field(False, description="on: capbot serve sends reminders by itself")
    reminder_max: int = Field(3, ge=0, description="reminders per person at most")
    reminder_interval_days: float = Field(7.0, gt=0, description="days between reminders")
    quiet_hours: str = Field("20-08", description="local hours START-END with no reminders")
    reminder_check_seconds: float = Field(300.0, gt=0, description="how often serve looks")

    imap_host: str | None = None
    imap_port: int | None = None
    imap_user: str | None = None
    imap_password: str | None = None
    imap_security: Literal["ssl", "plain"] = "ssl"
    imap_folder: str = "INBOX"
    imap_processed_folder: str = Field("Processed", min_length=1,
                                       description="processed mail is moved to this folder")
    smtp_host: str | None = None
    smtp_port: int | None = None
    smtp_user: str | None = None
    smtp_password: str | None = None
    smtp_security: Literal["ssl", "starttls", "plain"] = "starttls"
    imap_cafile: str | None = Field(None, description="CA bundle trusted for IMAPS "
                                                     "(self-signed servers)")
    imap_idle_seconds: float = Field(600.0, gt=0, description="restart IDLE this often (a "
                                                             "silently dropped connection is "
                                                             "noticed then)")
    imap_poll_seconds: float = Field(60.0, gt=0, description="poll interval without IDLE; "
                                                            "also the retry delay")
    imap_use_idle: bool = True
    smtp_cafile: str | None = Field(None, description="CA bundle trusted for SMTP TLS")
    smtp_connections: int = Field(4, ge=1, le=20)
    smtp_timeout: float = Field(30.0, gt=0)
    email_from: str | None = None
    email_from_name: str | None = None
    email_max_bytes: int = 2_000_000
    # Invitations and reminders by email, messages a second (0: as fast as SMTP takes them);
    # replies to a person's own mail are not held back.
    email_rate: float = Field(10.0, ge=0, description="bulk mails a second")
    email_daily_reply_cap: int = 30
    email_unverified_reply_cap: int = Field(3, ge=0, description=(
        "replies per address per UTC day to mail that is not shown to be that person's "
        "(no valid reply token): counted apart, so forged mail neither silences them nor "
        "floods them"))
    email_trust_auth_results: str | None = Field(None, description=(
        "authserv-id of our receiving mail server: its Authentication-Results header (an "
        "aligned DMARC/DKIM/SPF pass) then proves From without a reply token; unset: only "
        "reply tokens do"))
    secret_key: str | None = None
    admin_emails: Annotated[list[str], NoDecode] = Field(default_factory=list)

    @field_validator("telegram_admins", "admin_emails", mode="before")
    @classmethod
    def _split_list(cls, value):
        if isinstance(value, str):
            return [v.strip() for v in value.replace(";", ",").split(",") if v.strip()]
        if isinstance(value, int):
            return [value]
        return value

    @field_validator("quiet_hours")
    @classmethod
    def _quiet_hours(cls, value: str) -> str:
        from bot.reminders import parse_quiet_hours

        parse_quiet_hours(value)  # raises ValueError with what is wrong
        return value

    @property
    def reminder_policy(self):
        """The reminder rules these settings describe (bot/reminders.py)."""
        from datetime import timedelta

        from bot.reminders import Policy, parse_quiet_hours

        start, end = parse_quiet_hours(self.quiet_hours)
        return Policy(self.reminder_max, timedelta(days=self.reminder_interval_days),
                      start, end)

    @property
    def spool_file(self) -> Path:
        if self.spool_path:
            return self.spool_path
        url = make_url(self.database_url)
        if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
            return Path(f"{url.database}.spool")
        return Path("capbot-spool.jsonl")

    @property
    def telegram_enabled(self) -> bool:
        return bool(self.telegram_token)

    @property
    def email_enabled(self) -> bool:
        return bool(self.imap_host and self.smtp_host)

    def check_email(self) -> None:
        missing = [name for name in ("imap_user", "imap_password", "email_from", "secret_key")
                   if not getattr(self, name)]
        if missing:
            raise ConfigError("email channel: set " + ", ".join(
                f"CAPBOT_{m.upper()}" for m in missing))


def load_settings(**overrides) -> Settings:
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            name = "CAPBOT_" + "_".join(str(p) for p in err["loc"][:1]).upper()
            problems.append(f"{name}: {err['msg']}")
        raise ConfigError("invalid configuration: " + "; ".join(problems)) from None
    except SettingsError as exc:
        raise ConfigError(f"invalid configuration: {exc}") from None
