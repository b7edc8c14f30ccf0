"""Reading our receiving server's Authentication-Results header (RFC 8601): is `From` genuine?

Anyone can write an Authentication-Results header into a mail, so only one is read: the
topmost one whose authserv-id is our receiving server's (CAPBOT_EMAIL_TRUST_AUTH_RESULTS).
Servers prepend their header, so a copy the sender forged with the same id sits below the
genuine one. The receiving server must therefore add its header to every mail (and should
remove copies with its own id, as RFC 8601 section 5 asks); without it, leave the setting
unset and rely on reply tokens alone.

A pass counts only when it is aligned with the `From` domain, as DMARC does: dmarc=pass for
header.from, dkim=pass for a signing domain (header.d, or header.i's domain) equal to or a
parent of it, or spf=pass for the envelope sender's domain. A pass for some other domain
proves nothing about `From`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["AuthResult", "parse_auth_results", "verified_from"]


@dataclass(frozen=True, slots=True)
class AuthResult:
    """One "method=result prop=value ..." of an Authentication-Results header."""

    method: str  # lowercase: dmarc, dkim, spf, ...
    result: str  # lowercase: pass, fail, none, ...
    props: dict[str, str]  # "header.from" -> "example.org" (keys lowercase)


def _strip_comments(value: str) -> str:
    """The header without (comments), which may nest; quoted strings are kept as they are."""
    out: list[str] = []
    depth = 0
    quoted = escaped = False
    for ch in value:
        if escaped:
            escaped = False
            if depth == 0:
                out.append(ch)
            continue
        if ch == "\\":
            escaped = True
            if depth == 0:
                out.append(ch)
            continue
        if quoted:
            if ch == '"':
                quoted = False
            out.append(ch)
        elif ch == '"' and depth == 0:
            quoted = True
            out.append(ch)
        elif ch == "(":
            depth += 1
        elif ch == ")" and depth:
            depth -= 1
            out.append(" ")
        elif depth == 0:
            out.append(ch)
    return "".join(out)


def _split(value: str, sep: str) -> list[str]:
    """Split on sep outside quoted strings."""
    parts, current, quoted, escaped = [], [], False, False
    for ch in value:
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch == sep and not quoted:
            parts.append("".join(current))
            current = []
            continue
        current.append(ch)
    parts.append("".join(current))
    return parts


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1].replace('\\"', '"').replace("\\\\", "\\")
    return value


def parse_auth_results(value: str) -> tuple[str, list[AuthResult]]:
    """(authserv-id lowercased, results) of one header value; ("", []) when unreadable."""
    clean = " ".join(_strip_comments(value).split())
    head, *specs = _split(clean, ";")
    words = head.split()
    if not words:
        return "", []
    authserv_id = _unquote(words[0]).lower()
    results = []
    for spec in specs:
        tokens = [t for t in _tokens(spec) if t]
        if not tokens or "=" not in tokens[0]:
            continue  # "none", or garbage
        method, _, result = tokens[0].partition("=")
        props = {}
        for token in tokens[1:]:
            name, eq, pvalue = token.partition("=")
            if eq:
                props[name.strip().lower()] = _unquote(pvalue)
        results.append(AuthResult(method.strip().lower().split("/")[0],
                                  _unquote(result).lower(), props))
    return authserv_id, results


def _tokens(spec: str) -> list[str]:
    """ "dkim = pass header.d=a.org" -> ["dkim=pass", "header.d=a.org"]."""
    spec = " ".join(spec.split())
    spec = spec.replace(" =", "=").replace("= ", "=").replace(" .", ".").replace(". ", ".")
    return _split(spec, " ")


def _domain(value: str) -> str:
    value = value.strip().strip("<>").lower().rstrip(".")
    domain = value.rpartition("@")[2]
    try:
        return domain.encode("idna").decode("ascii") if domain else ""
    except UnicodeError:
        return domain


def _aligned(signer: str, from_domain: str) -> bool:
    """Relaxed alignment without a public-suffix list: equal, or a parent with a dot in it
    (a one-label "org" never aligns; signing for a registry's suffix needs its DNS anyway)."""
    if not signer or not from_domain:
        return False
    return signer == from_domain or ("." in signer and from_domain.endswith("." + signer))


def _proves(r: AuthResult, from_domain: str) -> bool:
    if r.method == "dmarc":
        return _domain(r.props.get("header.from", "")) == from_domain
    if r.method == "dkim":
        signer = r.props.get("header.d") or r.props.get("header.i", "")
        return _aligned(_domain(signer), from_domain)
    # spf: smtp.helo names the sending host, not the sender, so it never aligns.
    return _aligned(_domain(r.props.get("smtp.mailfrom", "")), from_domain)


def verified_from(headers: Iterable[str], authserv_id: str, from_address: str) -> str | None:
    """The method that proves from_address's domain ("dmarc", "dkim", "spf"), else None.

    headers: the Authentication-Results values top to bottom, as the mail has them.
    """
    wanted = authserv_id.strip().lower()
    from_domain = _domain(from_address)
    if not wanted or not from_domain:
        return None
    for value in headers:
        server, results = parse_auth_results(value)
        if server != wanted:
            continue
        # The topmost header of our server is the only one read: what lies below it may be
        # the sender's forgery.
        for method in ("dmarc", "dkim", "spf"):
            for r in results:
                if r.method == method and r.result == "pass" and _proves(r, from_domain):
                    return method
        return None
    return None
