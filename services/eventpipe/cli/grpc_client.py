"""How the CLI reaches a service: through ``eventpipe.client``, with the bearer token when auth
is on (``--token`` or ``EVENTPIPE_TOKEN``; ``eventpipe auth token`` mints a dev token)."""

from __future__ import annotations

import argparse
import os

import grpc

from eventpipe.client import EventPipeClient, EventPipeError
from eventpipe.client.channel import open_channel

TOKEN_ENV = "EVENTPIPE_TOKEN"


def add_token_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--token",
        default=None,
        help=f"bearer token when auth is on (default: ${TOKEN_ENV})",
    )


def resolve_token(token: str | None) -> str | None:
    return token or os.environ.get(TOKEN_ENV) or None


def channel(address: str, token: str | None = None) -> grpc.Channel:
    """A plaintext channel to ``address`` that sends the token (argument or environment)."""
    return open_channel(address, resolve_token(token))


def client(address: str, token: str | None = None, tenant_id: str | None = None) -> EventPipeClient:
    """The library's client on one service address, with the token (argument or environment)."""
    return EventPipeClient(address, token=resolve_token(token), tenant_id=tenant_id)


def refusal(error: EventPipeError) -> str:
    """One line about a failed call: its code and what the service said."""
    return f"{error.code.name}: {error}"
