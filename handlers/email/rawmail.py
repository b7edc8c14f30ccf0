"""Raw message bytes kept as text in inbound_messages.payload, without loss."""

from __future__ import annotations

import base64

RAW_BASE64_MARKER = "=?capbot-base64?=\n"


def encode_raw(raw: bytes) -> str:
    """Raw message bytes as text for inbound_messages.payload, without loss.

    UTF-8 without NUL (7-bit MIME included, so nearly all mail) is stored as it is, readable
    in the database; anything else (8-bit legacy charsets, NUL, which PostgreSQL text
    refuses) is stored as a marker line and base64. The marker cannot begin a real message:
    its first line has no colon, so it is not a header.
    """
    if b"\x00" not in raw:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            pass
        else:
            if not text.startswith(RAW_BASE64_MARKER):
                return text
    return RAW_BASE64_MARKER + base64.encodebytes(raw).decode("ascii")


def decode_raw(payload: str) -> bytes:
    """The raw bytes stored by encode_raw."""
    if payload.startswith(RAW_BASE64_MARKER):
        return base64.decodebytes(payload[len(RAW_BASE64_MARKER):].encode("ascii"))
    return payload.encode("utf-8")


__all__ = ["RAW_BASE64_MARKER", "decode_raw", "encode_raw"]
