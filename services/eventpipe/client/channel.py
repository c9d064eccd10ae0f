"""Channels to the services: plaintext or TLS, with the bearer token on every call."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

# A page of 1,000 events of up to 32 KiB each is larger than gRPC's default 4 MiB receive limit.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
CHANNEL_OPTIONS = (
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
)


class BearerToken(
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[misc]
    grpc.UnaryStreamClientInterceptor,  # type: ignore[misc]
    grpc.StreamUnaryClientInterceptor,  # type: ignore[misc]
    grpc.StreamStreamClientInterceptor,  # type: ignore[misc]
):
    """Adds ``authorization: Bearer <token>`` to every call, plaintext or TLS alike (call
    credentials would refuse a plaintext channel, and the local stack is plaintext)."""

    def __init__(self, token: str) -> None:
        self._header = ("authorization", f"Bearer {token}")

    def _with_token(self, details: Any) -> Any:
        metadata = [*(details.metadata or ()), self._header]
        return details._replace(metadata=metadata)

    def intercept_unary_unary(
        self, continuation: Callable[..., Any], details: Any, request: Any
    ) -> Any:
        return continuation(self._with_token(details), request)

    def intercept_unary_stream(
        self, continuation: Callable[..., Any], details: Any, request: Any
    ) -> Any:
        return continuation(self._with_token(details), request)

    def intercept_stream_unary(
        self, continuation: Callable[..., Any], details: Any, requests: Any
    ) -> Any:
        return continuation(self._with_token(details), requests)

    def intercept_stream_stream(
        self, continuation: Callable[..., Any], details: Any, requests: Any
    ) -> Any:
        return continuation(self._with_token(details), requests)


def open_channel(
    target: str,
    token: str | None = None,
    tls: bool | grpc.ChannelCredentials = False,
) -> grpc.Channel:
    """A channel to ``target`` (``host:port``).

    Args:
        token: a bearer token (``eventpipe auth token`` mints a development one), or None.
        tls: False for plaintext, True for TLS with the system's roots, or credentials of
            your own (``grpc.ssl_channel_credentials(...)``).
    """
    if tls is False:
        channel = grpc.insecure_channel(target, options=CHANNEL_OPTIONS)
    else:
        credentials = grpc.ssl_channel_credentials() if tls is True else tls
        channel = grpc.secure_channel(target, credentials, options=CHANNEL_OPTIONS)
    return grpc.intercept_channel(channel, BearerToken(token)) if token else channel
