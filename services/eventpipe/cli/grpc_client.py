"""How the CLI reaches a service: one channel helper that adds the bearer token when auth is
on (``--token`` or ``EVENTPIPE_TOKEN``; ``eventpipe auth token`` mints a dev token)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import Any

import grpc

TOKEN_ENV = "EVENTPIPE_TOKEN"


def add_token_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--token",
        default=None,
        help=f"bearer token when auth is on (default: ${TOKEN_ENV})",
    )


def resolve_token(token: str | None) -> str | None:
    return token or os.environ.get(TOKEN_ENV) or None


class _BearerToken(
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[misc]
    grpc.UnaryStreamClientInterceptor,  # type: ignore[misc]
    grpc.StreamUnaryClientInterceptor,  # type: ignore[misc]
    grpc.StreamStreamClientInterceptor,  # type: ignore[misc]
):
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


def channel(address: str, token: str | None = None) -> grpc.Channel:
    """A plaintext channel to ``address`` that sends the token (argument or environment)."""
    plain = grpc.insecure_channel(address)
    resolved = resolve_token(token)
    return grpc.intercept_channel(plain, _BearerToken(resolved)) if resolved else plain
