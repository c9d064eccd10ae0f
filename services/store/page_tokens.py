"""Opaque, tamper-evident page tokens for ListRawEvents.

A token carries the last row key returned and a digest of the request's parameters, signed
with HMAC-SHA256. A forged or edited token, or one reused with other parameters, is refused
with INVALID_ARGUMENT instead of letting a caller steer a scan to arbitrary keys.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

from eventpipe.core.errors import invalid

_FIELD = "page_token"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class PageTokenCodec:
    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def _sign(self, payload: bytes) -> bytes:
        return hmac.new(self._secret, payload, hashlib.sha256).digest()[:16]

    @staticmethod
    def params_digest(*params: object) -> str:
        return hashlib.sha256(json.dumps(params).encode()).hexdigest()[:16]

    def encode(self, last_key: bytes, params_digest: str) -> str:
        payload = json.dumps({"k": _b64(last_key), "p": params_digest}).encode()
        return f"{_b64(payload)}.{_b64(self._sign(payload))}"

    def decode(self, token: str, params_digest: str) -> bytes:
        """The last row key of the previous page; raises InvalidArgument when tampered."""
        try:
            payload_text, signature_text = token.split(".", 1)
            payload = _unb64(payload_text)
            signature = _unb64(signature_text)
        except (ValueError, TypeError):
            raise invalid(_FIELD, "is not a token this service issued") from None
        if not hmac.compare_digest(signature, self._sign(payload)):
            raise invalid(_FIELD, "is not a token this service issued")
        data = json.loads(payload)
        if data.get("p") != params_digest:
            raise invalid(_FIELD, "was issued for a request with other parameters")
        return _unb64(data["k"])
