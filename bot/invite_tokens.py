"""Signed invitation tokens: one per invitation, in its deep link, reply address and
List-Unsubscribe subject (pure).

Format: "i" + lowercase unpadded base32 of (invitation id, 6 bytes big-endian || MAC, 10
bytes of HMAC-SHA256 over "capbot-invite-v1" and the id): 27 characters of [a-z2-7], safe
in a Telegram /start payload ([A-Za-z0-9_-], at most 64), a plus-address and a subject.
No expiry: a round's invitation stays valid until the round ends (the invitation row).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re

__all__ = ["find_invite_token", "make_invite_token", "verify_invite_token"]

_DOMAIN = b"capbot-invite-v1"
_ID_BYTES = 6
_LENGTH = 1 + 26  # "i" + base32 of 16 bytes, unpadded
_FOUND = re.compile(r"(?<![a-z0-9])(i[a-z2-7]{26})(?![a-z0-9])", re.IGNORECASE)


def _mac(secret: bytes, body: bytes) -> bytes:
    return hmac.new(secret, _DOMAIN + b"\x00" + body, hashlib.sha256).digest()[:10]


def make_invite_token(secret: bytes, invitation_id: int) -> str:
    if not secret:
        raise ValueError("secret must not be empty")
    body = invitation_id.to_bytes(_ID_BYTES, "big")
    return "i" + base64.b32encode(body + _mac(secret, body)).decode().rstrip("=").lower()


def verify_invite_token(secret: bytes, token: str) -> int | None:
    """The invitation id of a genuine token, else None."""
    token = (token or "").strip().lower()
    if len(token) != _LENGTH or not token.startswith("i") or not secret:
        return None
    try:
        raw = base64.b32decode(token[1:].upper() + "======")
    except (ValueError, TypeError):
        return None
    body, mac = raw[:_ID_BYTES], raw[_ID_BYTES:]
    if not hmac.compare_digest(_mac(secret, body), mac):
        return None
    # The last character carries 2 unused bits: only the one spelling make_ gives is genuine.
    if base64.b32encode(raw).decode().rstrip("=").lower() != token[1:]:
        return None
    return int.from_bytes(body, "big")


def find_invite_token(text: str) -> str | None:
    """The first thing shaped like an invitation token in text (unverified), lowercased."""
    match = _FOUND.search(text or "")
    return match.group(1).lower() if match else None
