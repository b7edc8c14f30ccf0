"""Email channel: pure parsing, quote stripping, loop-safety classification and reply tokens."""

from .classify import Classification, can_reply, classify
from .parsing import ParsedMail, normalize_address, parse_message
from .quotes import strip_reply
from .tokens import TokenClaims, find_token, make_token, verify_token

__all__ = [
    "Classification",
    "ParsedMail",
    "TokenClaims",
    "can_reply",
    "classify",
    "find_token",
    "make_token",
    "normalize_address",
    "parse_message",
    "strip_reply",
    "verify_token",
]
