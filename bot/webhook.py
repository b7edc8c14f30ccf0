"""The secret token of the Telegram webhook: the configured one, else one derived from the bot
token. A secret like the others: the log filter (bot/logs.py) redacts it too."""

from __future__ import annotations

import hashlib
from typing import Any


def webhook_secret(settings: Any) -> str:
    """The configured secret, else one derived from the token: stable across restarts and
    replicas, unknown to anyone without the token."""
    if settings.telegram_webhook_secret:
        return settings.telegram_webhook_secret
    return hashlib.sha256(b"capbot-webhook:" + settings.telegram_token.encode()).hexdigest()
