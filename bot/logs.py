"""Logging set-up: secrets never reach a log line, and chatty libraries stay quiet at DEBUG."""

from __future__ import annotations

import contextlib
import logging
import re
import sys
from typing import TextIO

from sqlalchemy.engine import make_url

from bot.config import Settings
from bot.webhook import webhook_secret

# Libraries that log whole updates or mails at DEBUG: INFO unless asked for. (SQLAlchemy
# keeps its own logger at WARNING unless echo is asked for.)
LIBRARIES = ("telegram", "httpx", "httpcore", "hpack", "aiohttp", "tornado", "aioimaplib",
             "aiosmtplib", "mail.log", "asyncio", "urllib3")
REDACTED = "[redacted]"
_PATTERNS = (  # (pattern, replacement): what a secret looks like where it was seen
    (re.compile(r"(/bot)\d{3,}:[A-Za-z0-9_-]{20,}"), r"\1" + REDACTED),  # Bot API URL
    (re.compile(r"\b\d{6,}:[A-Za-z0-9_-]{30,}\b"), REDACTED),  # a Bot API token anywhere
    (re.compile(r"(://[^:/@\s]+):[^@\s]+@"), r"\1:" + REDACTED + "@"),  # URL user:password@
    (re.compile(r"(?i)\b(password|passwd|secret|token)([=:]\s?)[^&\s,;]+"),
     r"\1\2" + REDACTED),
    (re.compile(r"(?i)\b(LOGIN\s+\S+\s+)\S+"), r"\1" + REDACTED),  # IMAP LOGIN user pw
    (re.compile(r"(?i)\b(AUTH\s+(?:PLAIN|LOGIN)\s+)\S+"), r"\1" + REDACTED),  # SMTP AUTH
)


class RedactingFilter(logging.Filter):
    """Replaces the configured secrets, and anything shaped like one, in every record."""

    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        # Longest first, so that a secret containing another is replaced whole.
        self.secrets = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        for pattern, replacement in _PATTERNS:
            text = pattern.sub(replacement, text)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string is the library's bug; keep the raw message
            message = str(record.msg)
        record.msg, record.args = self.redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        return True


def settings_secrets(settings: Settings) -> list[str]:
    found = [settings.telegram_token, settings.imap_password, settings.smtp_password,
             settings.secret_key, settings.telegram_webhook_secret]
    if settings.telegram_token:  # the webhook's secret when none is configured (PTB logs it)
        found.append(webhook_secret(settings))
    with contextlib.suppress(Exception):  # an invalid URL is reported elsewhere, by name
        found.append(make_url(settings.database_url).password)
    return [str(s) for s in found if s]


def configure_logging(settings: Settings, *, level: str | None = None,
                      stream: TextIO = sys.stderr) -> logging.Handler:
    """One stderr handler on the root logger, with the redacting filter on it."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactingFilter(settings_secrets(settings)))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel((level or settings.log_level).upper())
    quiet = settings.log_libraries != "debug" and root.level < logging.INFO
    for name in LIBRARIES:
        logging.getLogger(name).setLevel(logging.INFO if quiet else logging.NOTSET)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    return handler
