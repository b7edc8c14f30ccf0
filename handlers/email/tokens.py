"""Signed reply tokens that bind an email reply to a submission (plus-address or subject tag).

Format (version 1), before encoding::

    ref (6 bits a character, 1..12 characters of [A-Z0-9-], zero-padded to whole bytes)
    || issue day (2 bytes, days since 1970-01-01, big-endian)
    || address tag (4 bytes: HMAC-SHA256 of the owner's normalized address under a derived key)
    || MAC (10 bytes = 80 bits: HMAC-SHA256 over "capbot-token-v1" and everything above)

encoded as lowercase, unpadded RFC 4648 base32 (``[a-z2-7]``): 28 to 40 characters (37 for a
"CB-7K3M9Q" reference). Lowercase base32 survives servers that case-fold local parts, and is safe
in a plus-address (``bot+TOKEN@example.org``) and in a subject tag (``[ref:TOKEN]``).

The token binds the owner's address: a reply carrying it from another address is still accepted as
proof of having received our mail, but ``TokenClaims.matches_address`` is False, so the service can
treat it as a delegate (or ask for confirmation). The address tag is keyed, so a token does not let
anyone test guesses of whose it is; it is only 32 bits because the MAC, not the tag, gives the
security. A token proves possession of the bot's mail, not the identity of ``From``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

__all__ = ["TokenClaims", "find_token", "make_token", "verify_token"]

_DOMAIN = b"capbot-token-v1"
_ADDRESS_KEY_LABEL = b"capbot-token-address-v1"
_REF_ALPHABET = "-0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"  # code = index + 1; 0 pads
_REF_RE = re.compile(r"^[A-Z0-9-]{1,12}$")
_DAY = 86_400
_TAIL = 2 + 4 + 10
_MIN_LEN, _MAX_LEN = 28, 40
# Found after "+" in a local part (bot+TOKEN@…) or in a subject tag ([ref:TOKEN]).
_IN_ADDRESS = re.compile(r"\+([a-z2-7]{28,40})@", re.IGNORECASE)
_IN_SUBJECT = re.compile(r"\[ref:\s*([a-z2-7]{28,40})\s*\]", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class TokenClaims:
    """What a valid token says: the submission reference, the issue day, the owner's tag."""

    ref: str
    issued_day: int  # days since 1970-01-01 (UTC)
    address_tag: str  # hex of the 4-byte keyed hash of the owner's normalized address
    _address_key: bytes = field(repr=False, compare=False, default=b"")

    @property
    def issued(self) -> int:
        """Unix time of the start of the issue day."""
        return self.issued_day * _DAY

    def matches_address(self, address: str) -> bool:
        """True when address (any spelling: case, display name, IDN) is the token's owner."""
        tag = _address_tag(self._address_key, address).hex()
        return hmac.compare_digest(tag, self.address_tag)


def _address_key(secret: bytes) -> bytes:
    return hmac.new(secret, _ADDRESS_KEY_LABEL, hashlib.sha256).digest()


def _address_tag(key: bytes, address: str) -> bytes:
    from .parsing import normalize_address  # parsing imports this module

    normalized = normalize_address(address) or address.strip().lower()
    return hmac.new(key, normalized.encode("utf-8"), hashlib.sha256).digest()[:4]


def _mac(secret: bytes, body: bytes) -> bytes:
    return hmac.new(secret, _DOMAIN + b"\x00" + body, hashlib.sha256).digest()[:10]


def _pack_ref(ref: str) -> bytes:
    value = 0
    for ch in ref:
        value = (value << 6) | (_REF_ALPHABET.index(ch) + 1)
    bits = 6 * len(ref)
    size = (bits + 7) // 8
    return (value << (size * 8 - bits)).to_bytes(size, "big")


def _unpack_ref(data: bytes) -> str | None:
    value = int.from_bytes(data, "big")
    total = len(data) * 8
    chars = []
    for k in range(total // 6):
        code = (value >> (total - 6 * (k + 1))) & 0x3F
        if code == 0:
            break
        if code > len(_REF_ALPHABET):
            return None
        chars.append(_REF_ALPHABET[code - 1])
    ref = "".join(chars)
    # The canonical packing of ref must give back these exact bytes (no trailing junk).
    return ref if ref and _pack_ref(ref) == data else None


def make_token(secret: bytes, submission_ref: str, address: str, issued: int) -> str:
    """Sign a token for submission_ref, owned by address, issued at Unix time issued (seconds)."""
    if not secret:
        raise ValueError("secret must not be empty")
    ref = submission_ref.strip().upper()
    if not _REF_RE.match(ref):
        raise ValueError(f"submission reference must be 1-12 of [A-Z0-9-]: {submission_ref!r}")
    day = issued // _DAY
    if not 0 <= day < 1 << 16:
        raise ValueError(f"issue time out of range: {issued}")
    body = _pack_ref(ref) + day.to_bytes(2, "big") + _address_tag(_address_key(secret), address)
    raw = body + _mac(secret, body)
    return base64.b32encode(raw).decode("ascii").rstrip("=").lower()


def verify_token(
    secret: bytes | Iterable[bytes], token: str, now: int, max_age_days: int = 90
) -> TokenClaims | None:
    """Claims of a genuine, unexpired token, else None. secret may list keys (rotation)."""
    token = (token or "").strip().lower()
    if not _MIN_LEN <= len(token) <= _MAX_LEN or len(token) % 8 in (1, 3, 6):
        return None
    try:
        raw = base64.b32decode(token.upper() + "=" * (-len(token) % 8))
    except (ValueError, TypeError):
        return None
    # Unused low bits of the last character must be zero: one token, one spelling.
    if len(raw) < _TAIL + 1 or base64.b32encode(raw).decode().rstrip("=").lower() != token:
        return None
    body, mac = raw[:-10], raw[-10:]
    secrets = [secret] if isinstance(secret, bytes | bytearray) else list(secret)
    key = next(
        (bytes(s) for s in secrets if s and hmac.compare_digest(_mac(bytes(s), body), mac)),
        None,
    )
    if key is None:
        return None
    ref = _unpack_ref(body[:-6])
    if ref is None:
        return None
    day = int.from_bytes(body[-6:-4], "big")
    today = now // _DAY
    # One day of slack for clocks on either side of midnight.
    if day > today + 1 or today - day > max_age_days:
        return None
    return TokenClaims(
        ref=ref,
        issued_day=day,
        address_tag=body[-4:].hex(),
        _address_key=_address_key(key),
    )


def find_token(text: str) -> str | None:
    """The first token in a plus-address (bot+TOKEN@…) or a subject tag ([ref:TOKEN]), lowercased.

    Unverified: pass it to verify_token.
    """
    if not text:
        return None
    match = _IN_ADDRESS.search(text) or _IN_SUBJECT.search(text)
    return match.group(1).lower() if match else None
