"""How the CLI reaches a service: through ``eventpipe.client``, with the bearer token when auth
is on (``--token`` or ``EVENTPIPE_TOKEN``; ``eventpipe auth token`` mints a dev token)."""

from __future__ import annotations

import argparse
import os

import grpc

from eventpipe.client import EventPipeClient, EventPipeError, RetryPolicy
from eventpipe.client.channel import open_channel

TOKEN_ENV = "EVENTPIPE_TOKEN"
RETRY_DEADLINE_ENV = "EVENTPIPE_CLIENT_RETRY_DEADLINE_SECONDS"
# A person waits at the terminal: a service that stays unreachable is reported after 30 s,
# not after the library's 120 s, unless the variable asks for another deadline.
CLI_RETRY_DEADLINE_SECONDS = 30.0


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
    retry = None
    if RETRY_DEADLINE_ENV not in os.environ:
        retry = RetryPolicy(deadline=CLI_RETRY_DEADLINE_SECONDS)
    return EventPipeClient(address, token=resolve_token(token), tenant_id=tenant_id, retry=retry)


def refusal(error: EventPipeError) -> str:
    """One line about a failed call: its code and what the service said."""
    return f"{error.code.name}: {error}"
