"""Deep-link and reply tokens cannot be guessed or forged (issue 13, abuse): what
tests/test_invite_tokens.py and tests/email/test_tokens.py leave out.

Those check one-character changes, truncation, other keys, random strings for invitation
tokens and expiry and address binding for reply tokens. Added here: guesses shaped exactly
like a genuine token (right alphabet and length) for both kinds; reply tokens spliced
from genuine parts (another report's reference, a later issue day to outlive the expiry,
another owner's address tag, with this token's MAC); and the two kinds kept apart under one
CAPBOT_SECRET_KEY (neither verifies as the other, nor does an invitation token signed for
one id verify for the next).
"""

from __future__ import annotations

import base64
import random

from bot.invite_tokens import make_invite_token, verify_invite_token
from handlers.email.tokens import make_token, verify_token

KEY = b"one CAPBOT_SECRET_KEY for both kinds"
NOW = 1_780_000_000
B32 = "abcdefghijklmnopqrstuvwxyz234567"
GUESSES = 20_000


def _b32(raw: bytes) -> str:
    return base64.b32encode(raw).decode().rstrip("=").lower()


def _raw(token: str) -> bytes:
    return base64.b32decode(token.upper() + "=" * (-len(token) % 8))


def test_well_formed_guesses_never_verify() -> None:
    """Random tokens of the genuine shape: what someone guessing deep links or reply
    addresses would try (each has a 2^-80 chance; none of 20,000 per kind may pass)."""
    rng = random.Random(1313)
    genuine_reply = make_token(KEY, "CB-7K3M9Q", "owner@example.org", NOW)
    for _ in range(GUESSES):
        invite = "i" + "".join(rng.choice(B32) for _ in range(26))
        assert verify_invite_token(KEY, invite) is None, invite
        # A reply token's shape: genuine body bytes with a random MAC, or random bytes.
        raw = _raw(genuine_reply)
        guess = raw[:-10] + rng.randbytes(10) if rng.random() < 0.5 else rng.randbytes(len(raw))
        assert verify_token(KEY, _b32(guess), NOW) is None, guess


def test_spliced_reply_tokens_are_refused() -> None:
    mine = make_token(KEY, "CB-AAAAAA", "me@example.org", NOW)
    theirs = make_token(KEY, "CB-BBBBBB", "victim@example.org", NOW)
    assert verify_token(KEY, mine, NOW) is not None
    raw_mine, raw_theirs = _raw(mine), _raw(theirs)
    ref_len = len(raw_mine) - 16  # ref || day (2) || address tag (4) || MAC (10)
    body, mac = raw_mine[:-10], raw_mine[-10:]
    # Another report's reference with my day, tag and MAC.
    spliced = raw_theirs[:ref_len] + body[ref_len:] + mac
    assert verify_token(KEY, _b32(spliced), NOW) is None
    # My token with a later issue day, to outlive the 90-day expiry.
    day = int.from_bytes(body[ref_len : ref_len + 2], "big")
    later = body[:ref_len] + (day + 80).to_bytes(2, "big") + body[ref_len + 2 :] + mac
    expired = NOW + 100 * 86_400
    assert verify_token(KEY, mine, expired) is None  # expired...
    assert verify_token(KEY, _b32(later), expired) is None  # ...and no way to renew it
    # The victim's address tag in my token: it would pass as theirs, not a delegate's.
    tagged = body[:-4] + raw_theirs[-14:-10] + mac
    assert verify_token(KEY, _b32(tagged), NOW) is None
    # Their MAC on my body.
    assert verify_token(KEY, _b32(body + raw_theirs[-10:]), NOW) is None


def test_invitation_and_reply_tokens_are_kept_apart_under_one_key() -> None:
    for n in range(1, 200):
        invite = make_invite_token(KEY, n)
        assert verify_token(KEY, invite, NOW) is None
        assert verify_token(KEY, invite[1:], NOW) is None  # without its "i"
        # The next invitation's id with this one's MAC (ids are sequential, so guessable).
        raw = _raw(invite[1:])
        nxt = "i" + _b32((n + 1).to_bytes(6, "big") + raw[6:])
        assert verify_invite_token(KEY, nxt) is None
    for ref in ("CB-7K3M9Q", "A", "CB-000001"):
        reply = make_token(KEY, ref, "owner@example.org", NOW)
        assert verify_invite_token(KEY, reply) is None
        assert verify_invite_token(KEY, "i" + reply[:26]) is None
