"""Reply tokens: format, signature, expiry, address binding and discovery in headers."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from handlers.email.tokens import find_token, make_token, verify_token

SECRET = b"test-secret-key-32-bytes-long!!!"
ISSUED = 1_740_996_000  # 2025-03-03 10:00 UTC
DAY = 86_400
OWNER = "maria.lopez@example.org"


def token(ref: str = "CB-7K3M9Q", address: str = OWNER, issued: int = ISSUED) -> str:
    return make_token(SECRET, ref, address, issued)


def test_round_trip() -> None:
    tok = token()
    claims = verify_token(SECRET, tok, ISSUED + DAY)
    assert claims is not None
    assert claims.ref == "CB-7K3M9Q"
    assert claims.issued_day == ISSUED // DAY
    assert claims.issued == (ISSUED // DAY) * DAY
    assert claims.matches_address(OWNER)


def test_format_is_short_lowercase_base32() -> None:
    tok = token()
    assert re.fullmatch(r"[a-z2-7]+", tok)
    assert len(tok) == 37  # 9-character reference
    assert len(token("ABCDEFGHIJKL")) == 40  # the longest reference still fits
    assert len(token("A")) == 28
    assert OWNER.split("@")[0] not in tok  # the address is hashed, not embedded


def test_deterministic_and_address_dependent() -> None:
    assert token() == token()
    assert token() != token(address="someone.else@example.org")
    assert token() != token(issued=ISSUED + DAY)
    assert token() != token(ref="CB-7K3M9R")


def test_case_folded_token_still_verifies() -> None:
    # Some servers upper-case the local part of bot+TOKEN@…
    assert verify_token(SECRET, token().upper(), ISSUED) is not None


def test_wrong_secret_fails() -> None:
    assert verify_token(b"another secret", token(), ISSUED) is None


def test_every_single_character_change_fails() -> None:
    tok = token()
    alphabet = "abcdefghijklmnopqrstuvwxyz234567"
    for i, ch in enumerate(tok):
        changed = tok[:i] + alphabet[(alphabet.index(ch) + 1) % 32] + tok[i + 1 :]
        assert verify_token(SECRET, changed, ISSUED) is None, i


def test_truncated_or_extended_fails() -> None:
    tok = token()
    for cut in range(1, len(tok)):
        assert verify_token(SECRET, tok[:cut], ISSUED) is None
    assert verify_token(SECRET, tok + "a", ISSUED) is None


def test_expiry() -> None:
    tok = token()
    assert verify_token(SECRET, tok, ISSUED + 90 * DAY) is not None
    assert verify_token(SECRET, tok, ISSUED + 91 * DAY) is None
    assert verify_token(SECRET, tok, ISSUED + 10 * DAY, max_age_days=5) is None
    # Issued "tomorrow" is tolerated (clock skew), later is not.
    assert verify_token(SECRET, tok, ISSUED - DAY) is not None
    assert verify_token(SECRET, tok, ISSUED - 3 * DAY) is None


def test_address_binding_is_normalized() -> None:
    claims = verify_token(SECRET, token(address="Maria.Lopez@Bücher.example"), ISSUED)
    assert claims is not None
    assert claims.matches_address("maria.lopez@xn--bcher-kva.example")
    assert claims.matches_address("María <MARIA.LOPEZ@BÜCHER.EXAMPLE>")
    assert not claims.matches_address("pedro@bücher.example")
    assert not claims.matches_address("")


def test_key_rotation() -> None:
    tok = token()
    claims = verify_token([b"new key", SECRET], tok, ISSUED)
    assert claims is not None and claims.matches_address(OWNER)
    assert verify_token([b"new key", b"older key"], tok, ISSUED) is None
    assert verify_token([], tok, ISSUED) is None


@pytest.mark.parametrize("ref", ["", "CB_7K3M9Q", "ABCDEFGHIJKLM", "CB 7K", "ÉTÉ"])
def test_bad_reference_is_refused(ref: str) -> None:
    with pytest.raises(ValueError):
        token(ref=ref)


def test_lowercase_reference_is_upper_cased() -> None:
    claims = verify_token(SECRET, token(ref="cb-7k3m9q"), ISSUED)
    assert claims is not None and claims.ref == "CB-7K3M9Q"


def test_bad_secret_or_time_is_refused() -> None:
    with pytest.raises(ValueError):
        make_token(b"", "CB-1", OWNER, ISSUED)
    with pytest.raises(ValueError):
        make_token(SECRET, "CB-1", OWNER, -DAY)
    with pytest.raises(ValueError):
        make_token(SECRET, "CB-1", OWNER, 70_000 * DAY)


@pytest.mark.parametrize(
    "junk",
    ["", "a", "a" * 28, "a" * 40, "1" * 37, "!" * 37, "=" * 40, "a" * 41, "aaaaaaaa" * 10, None],
)
def test_verify_rejects_junk(junk: str | None) -> None:
    assert verify_token(SECRET, junk, ISSUED) is None  # type: ignore[arg-type]


@settings(max_examples=100, deadline=None)
@given(
    ref=st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-", min_size=1, max_size=12),
    local=st.from_regex(r"[a-z0-9._+-]{1,20}", fullmatch=True),
    day=st.integers(0, 60_000),
)
def test_round_trip_property(ref: str, local: str, day: int) -> None:
    address = f"{local}@example.org"
    tok = make_token(SECRET, ref, address, day * DAY + 123)
    assert len(tok) <= 40 and re.fullmatch(r"[a-z2-7]+", tok)
    claims = verify_token(SECRET, tok, day * DAY)
    assert claims is not None
    assert (claims.ref, claims.issued_day) == (ref, day)
    assert claims.matches_address(address)


def test_find_token_in_addresses_and_subjects() -> None:
    tok = token()
    assert find_token(f"bot+{tok}@capbot.example.org") == tok
    assert find_token(f"Capacity Bot <BOT+{tok.upper()}@CAPBOT.EXAMPLE.ORG>") == tok
    assert find_token(f"Re: Questionnaire [ref:{tok}]") == tok
    assert find_token(f"RE: Questionnaire [REF: {tok.upper()} ]") == tok
    assert find_token("bot@capbot.example.org") is None
    assert find_token("bot+short@capbot.example.org") is None
    assert find_token("Re: Questionnaire [ref:CB-7K3M9Q]") is None
    assert find_token("") is None
