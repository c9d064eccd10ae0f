"""The CLI's channel sends the bearer token (argument, then EVENTPIPE_TOKEN) on every call."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
from eventpipe.cli import grpc_client

METHOD = "/test.Echo/Authorization"


def _authorization(_request: bytes, context: grpc.ServicerContext) -> bytes:
    metadata = dict(context.invocation_metadata())
    return str(metadata.get("authorization", "")).encode()


@pytest.fixture(scope="module")
def address() -> Iterator[str]:
    server = grpc.server(futures.ThreadPoolExecutor(2))
    handler = grpc.method_handlers_generic_handler(
        "test.Echo", {"Authorization": grpc.unary_unary_rpc_method_handler(_authorization)}
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(None)


def _call(channel: Any) -> str:
    return channel.unary_unary(METHOD)(b"", timeout=5).decode()  # type: ignore[no-any-return]


def test_token_argument_wins_over_environment(address: str, monkeypatch: Any) -> None:
    monkeypatch.setenv(grpc_client.TOKEN_ENV, "from-env")
    with grpc_client.channel(address, "from-arg") as channel:
        assert _call(channel) == "Bearer from-arg"


def test_environment_token_is_used_when_no_argument(address: str, monkeypatch: Any) -> None:
    monkeypatch.setenv(grpc_client.TOKEN_ENV, "from-env")
    with grpc_client.channel(address) as channel:
        assert _call(channel) == "Bearer from-env"


def test_no_token_sends_no_header(address: str, monkeypatch: Any) -> None:
    monkeypatch.delenv(grpc_client.TOKEN_ENV, raising=False)
    with grpc_client.channel(address) as channel:
        assert _call(channel) == ""


def test_the_cli_gives_up_on_an_unreachable_service_after_30_seconds_unless_told(
    monkeypatch: Any,
) -> None:
    monkeypatch.delenv(grpc_client.RETRY_DEADLINE_ENV, raising=False)
    with grpc_client.client("127.0.0.1:1") as client:
        assert client.retry.deadline == grpc_client.CLI_RETRY_DEADLINE_SECONDS == 30
    monkeypatch.setenv(grpc_client.RETRY_DEADLINE_ENV, "5")
    with grpc_client.client("127.0.0.1:1") as client:
        assert client.retry.deadline == 5
