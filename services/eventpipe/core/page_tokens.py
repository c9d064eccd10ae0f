"""Opaque, tamper-evident page tokens, shared by every paginated RPC.

A token carries the position to continue after (a cursor, such as the last row key returned)
and an HMAC-SHA256 over that position *and* the request's canonical parameters (the
"binding": tenant, entity, filters). So a token that is forged, altered, or replayed with
other parameters fails verification and the request gets INVALID_ARGUMENT. Each RPC signs
under its own domain, so a token of one RPC is never accepted by another. ``page_size`` is
deliberately not bound: a client may change its page size between pages without losing its
place (as AIP-158 allows).

Layout, base64url without padding: ``version (1 byte) | mac (16 bytes) | cursor``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

from eventpipe.core.errors import invalid

TOKEN_VERSION = 1
_MAC_BYTES = 16  # 128-bit truncated HMAC: forging needs ~2**128 tries
_MAX_TOKEN_CHARS = 1024
INVALID_TOKEN_REASON = (
    "is not a token this service issued, or was issued for other parameters of this request"
)


class PageTokenCodec:
    """Issues and verifies page tokens with one secret (shared by every replica)."""

    def __init__(self, secret: bytes, rpc: str) -> None:
        """``rpc`` names the paginated RPC: "eventpipe.query.v1.QueryService/ListEntityEvents"."""
        if len(secret) < 16:
            raise ValueError("the page token secret must be at least 16 bytes")
        self._secret = secret
        self._domain = f"{rpc}.page_token".encode() + b"\x00"

    def _mac(self, binding: bytes, cursor: bytes) -> bytes:
        message = self._domain + bytes([TOKEN_VERSION]) + binding + b"\x00" + cursor
        return hmac.new(self._secret, message, hashlib.sha256).digest()[:_MAC_BYTES]

    def issue(self, binding: bytes, cursor: bytes) -> str:
        """A token that continues after ``cursor`` for requests with this ``binding``."""
        raw = bytes([TOKEN_VERSION]) + self._mac(binding, cursor) + cursor
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")

    def verify(self, token: str, binding: bytes) -> bytes:
        """The cursor inside ``token``; INVALID_ARGUMENT unless it was issued for ``binding``."""
        if len(token) > _MAX_TOKEN_CHARS:
            raise invalid("page_token", INVALID_TOKEN_REASON)
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except (binascii.Error, ValueError):
            raise invalid("page_token", INVALID_TOKEN_REASON) from None
        # Only the canonical spelling is accepted: base64 decoders skip stray characters and
        # ignore the spare bits of the last one, so "altered" could otherwise still verify.
        if base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii") != token:
            raise invalid("page_token", INVALID_TOKEN_REASON)
        if len(raw) <= 1 + _MAC_BYTES or raw[0] != TOKEN_VERSION:
            raise invalid("page_token", INVALID_TOKEN_REASON)
        mac, cursor = raw[1 : 1 + _MAC_BYTES], raw[1 + _MAC_BYTES :]
        if not hmac.compare_digest(mac, self._mac(binding, cursor)):
            raise invalid("page_token", INVALID_TOKEN_REASON)
        return cursor
