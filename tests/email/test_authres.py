"""Authentication-Results (RFC 8601): parsing, and which pass proves `From` (pure)."""

from __future__ import annotations

import pytest

from handlers.email.authres import parse_auth_results, verified_from

ME = "mx.capbot.test"
FROM = "Vera <vera@ministry.example.org>"


def test_parsing_comments_quotes_versions_and_spaces() -> None:
    server, results = parse_auth_results(
        'MX.Capbot.Test 1; spf=pass (sender IP is 192.0.2.1; "ok") '
        'smtp.mailfrom="vera@ministry.example.org"; dkim = pass (2048-bit key) '
        "header.d=ministry.example.org header.s=sel1; dmarc=pass (p=REJECT sp=NONE) "
        "header.from=ministry.example.org")
    assert server == ME
    assert [(r.method, r.result) for r in results] == [("spf", "pass"), ("dkim", "pass"),
                                                        ("dmarc", "pass")]
    assert results[0].props == {"smtp.mailfrom": "vera@ministry.example.org"}
    assert results[1].props["header.d"] == "ministry.example.org"
    assert parse_auth_results(f"{ME}; none") == (ME, [])
    assert parse_auth_results("") == ("", [])


@pytest.mark.parametrize(("headers", "method"), [
    ([f"{ME}; dmarc=pass header.from=ministry.example.org"], "dmarc"),
    ([f"{ME}; dkim=pass header.d=ministry.example.org"], "dkim"),
    ([f"{ME}; dkim=pass header.d=example.org"], "dkim"),  # a parent domain signs: aligned
    ([f"{ME}; dkim=pass header.i=@ministry.example.org"], "dkim"),
    ([f"{ME}; spf=pass smtp.mailfrom=bounces@ministry.example.org"], "spf"),
    # ours on top, a stale or forged one below: only ours is read
    ([f"{ME}; dmarc=pass header.from=ministry.example.org", f"{ME}; dmarc=fail"], "dmarc"),
    # another hop above ours is skipped
    (["relay.example; dmarc=fail", f"{ME}; dmarc=pass header.from=ministry.example.org"],
     "dmarc"),
])
def test_an_aligned_pass_from_our_server_proves_from(headers: list[str], method: str) -> None:
    assert verified_from(headers, ME, FROM) == method


@pytest.mark.parametrize("headers", [
    [],
    [f"{ME}; dmarc=fail header.from=ministry.example.org",
     f"{ME}; dmarc=pass header.from=ministry.example.org"],  # the forged pass is below ours
    ["mx.elsewhere.example; dmarc=pass header.from=ministry.example.org"],
    [f"{ME}.evil.example; dmarc=pass header.from=ministry.example.org"],
    [f"{ME}; dmarc=pass header.from=evil.example"],
    [f"{ME}; dmarc=pass"],  # which domain? not said
    [f"{ME}; dkim=pass header.d=evil.example"],
    [f"{ME}; dkim=pass header.d=org"],  # a bare suffix never aligns
    [f"{ME}; dkim=pass header.d=sub.ministry.example.org"],  # a child does not sign for it
    [f"{ME}; spf=pass smtp.helo=ministry.example.org"],
    [f"{ME}; spf=pass smtp.mailfrom=evil.example"],
    [f"{ME}; dkim=fail header.d=ministry.example.org; spf=softfail "
     "smtp.mailfrom=ministry.example.org"],
    [f"{ME}; dkim=pass (ministry.example.org) header.d=evil.example"],  # a comment is no value
])
def test_nothing_else_proves_from(headers: list[str]) -> None:
    assert verified_from(headers, ME, FROM) is None


def test_without_a_server_id_or_a_from_nothing_is_proven() -> None:
    header = [f"{ME}; dmarc=pass header.from=ministry.example.org"]
    assert verified_from(header, "", FROM) is None
    assert verified_from(header, ME, "") is None
