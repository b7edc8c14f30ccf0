"""Invitation tokens (bot/invite_tokens.py): genuine ones verify, nothing else does."""

from __future__ import annotations

import base64
import random
import re
import string

import pytest

from bot.invite_tokens import find_invite_token, make_invite_token, verify_invite_token

KEY = b"capbot-test-key"


@pytest.mark.parametrize("invitation_id", [1, 2, 77, 10**6, 2**48 - 1])
def test_round_trip_fits_a_telegram_start_parameter(invitation_id: int) -> None:
    token = make_invite_token(KEY, invitation_id)
    assert re.fullmatch(r"[A-Za-z0-9_-]{1,64}", token)
    assert verify_invite_token(KEY, token) == invitation_id
    assert verify_invite_token(KEY, token.upper()) == invitation_id  # case-folding servers


def test_other_key_truncated_extended_and_forged_are_refused() -> None:
    token = make_invite_token(KEY, 42)
    assert verify_invite_token(b"another key", token) is None
    assert verify_invite_token(KEY, token[:-1]) is None
    assert verify_invite_token(KEY, token + "a") is None
    assert verify_invite_token(KEY, "") is None
    assert verify_invite_token(b"", token) is None
    # Every one-character change of a genuine token is refused (the MAC covers all of it).
    alphabet = string.ascii_lowercase[:26] + "234567"
    for i in range(1, len(token)):
        for ch in alphabet:
            if ch != token[i]:
                forged = token[:i] + ch + token[i + 1:]
                assert verify_invite_token(KEY, forged) is None, forged
    # Another invitation's id with this one's MAC.
    raw = base64.b32decode(token[1:].upper() + "======")
    spliced = (43).to_bytes(6, "big") + raw[6:]
    forged = "i" + base64.b32encode(spliced).decode().rstrip("=").lower()
    assert verify_invite_token(KEY, forged) is None


def test_random_strings_are_refused() -> None:
    rng = random.Random(11)
    for _ in range(5000):
        n = rng.choice([26, 27, 28, rng.randrange(0, 70)])
        candidate = "".join(rng.choice(string.ascii_letters + string.digits + "_-")
                            for _ in range(n))
        if rng.random() < 0.5:
            candidate = "i" + "".join(rng.choice("abcdefghijklmnopqrstuvwxyz234567")
                                      for _ in range(26))
        assert verify_invite_token(KEY, candidate) is None


def test_make_refuses_an_empty_key() -> None:
    with pytest.raises(ValueError):
        make_invite_token(b"", 1)


def test_found_in_a_plus_address_a_subject_tag_and_an_unsubscribe_subject() -> None:
    token = make_invite_token(KEY, 9)
    for text in (f"bot+{token}@capbot.test", f"Re: Invitation [ref:{token}]",
                 f"unsubscribe {token}", f"https://t.me/capbot_bot?start={token}"):
        assert find_invite_token(text) == token
    assert find_invite_token("no token here") is None
    longer = "a" * 40  # a reply token (28-40 base32 characters) is not an invitation token
    assert find_invite_token(f"bot+{longer}@capbot.test") is None
