"""Fuzzing the REST API through Envoy: schemathesis runs every operation of the OpenAPI document
Envoy serves (/openapi.json) against the real Envoy in front of the four real services, on the
session's Kafka and Bigtable emulator, with a valid token on every request.

A stack of its own, with auth on and the documented edge limits (not the e2e edge's tiny ones),
so that examples are refused for what they hold, not by a rate limit. The token is minted for
the example's own tenant, with every scope, so that a request passes authorization whenever its
tenant is one the token may carry, and reaches validation and the domain.

Aims (docs/edge.md, "Fuzzing"): no 5xx; every error body is the documented JSON error shape
(google.rpc.Status); every response matches the document's schema for its status. Examples are
bounded (``EXAMPLES`` per operation and mode, derandomized: the same examples every run) so that
the whole file fits in a few minutes on two cores.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from eventpipe.codegen import OPENAPI_DOCUMENT
from eventpipe.core.auth import SCOPES
from eventpipe.stack.stack import Stack, dev_token
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import _started_stack
from tests.helpers.http import http

pytestmark = [pytest.mark.abuse]

# Examples per operation and generation mode: 16 operations x 2 modes x 15 ~ 500 requests.
EXAMPLES = 15
MODES = (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE)
OPERATIONS = [
    (verb.upper(), path)
    for path, item in json.loads(OPENAPI_DOCUMENT.read_text())["paths"].items()
    for verb in item
]


@pytest.fixture(scope="module")
def fuzz_stack(run_dir: Path, kafka_broker: Any, bigtable_emulator: Any) -> Iterator[Stack]:
    yield from _started_stack(run_dir / "rest-fuzz", kafka_broker, bigtable_emulator, auth=True)


@pytest.fixture(scope="module")
def schema(fuzz_stack: Stack) -> Any:
    base_url = fuzz_stack.envoy.base_url
    loaded = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    loaded.config.update(base_url=base_url)
    return loaded


def error_is_a_status(ctx: Any, response: Any, case: Any) -> None:
    """Every error body is the documented JSON error shape: google.rpc.Status, with its code,
    message and details (a list of objects naming their type)."""
    if response.status_code < 400:
        return
    body = json.loads(response.content)
    assert isinstance(body, dict), body
    assert isinstance(body.get("code"), int) and body["code"] > 0, body
    assert isinstance(body.get("message"), str), body
    details = body.get("details")
    assert isinstance(details, list), body
    assert all(isinstance(d, dict) and "@type" in d for d in details), body


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    error_is_a_status,
]


@pytest.fixture(scope="module")
def tokens(fuzz_stack: Stack) -> Callable[[Any], str]:
    """A valid token for an example: its own tenant's (an operator's without one), every scope."""
    minted: dict[str | None, str] = {}

    def token_for(case: Any) -> str:
        tenant = (case.path_parameters or {}).get("tenant_id")
        if tenant not in minted:
            token = dev_token(fuzz_stack.config, tenant, SCOPES)
            assert token is not None
            minted[tenant] = token
        return minted[tenant]

    return token_for


@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[" ".join(o) for o in OPERATIONS])
def test_every_operation_answers_fuzzed_requests_without_5xx_in_the_documented_shapes(
    schema: Any, tokens: Callable[[Any], str], method: str, path: str
) -> None:
    operation = schema[path][method]
    strategy = st.one_of(*(operation.as_strategy(generation_mode=mode) for mode in MODES))
    session = requests.Session()

    @settings(
        max_examples=EXAMPLES * len(MODES),
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def fuzz(case: Any) -> None:
        headers = {"authorization": f"Bearer {tokens(case)}"}
        response = case.call(session=session, headers=headers)
        case.validate_response(response, checks=CHECKS, headers=headers)

    fuzz()


def test_the_fuzzed_document_is_the_one_envoy_serves(fuzz_stack: Stack) -> None:
    # The operations above are read from the build output at collection; Envoy serves that file.
    served = http(f"{fuzz_stack.envoy.base_url}/openapi.json").json()

    assert served == json.loads(OPENAPI_DOCUMENT.read_text())


def test_a_header_grpc_metadata_cannot_carry_is_dropped_not_a_server_error(
    fuzz_stack: Stack,
) -> None:
    # Found by the fuzzing above: `v0qdc+93m: x` reached the service, whose gRPC library
    # refused the whole call as INTERNAL (500). Legal HTTP, illegal gRPC metadata.
    tenant = "fuzz-headers"
    token = dev_token(fuzz_stack.config, tenant, ["query"])
    reply = http(
        f"{fuzz_stack.envoy.base_url}/v1/tenants/{tenant}/entities/nobody",
        headers={
            "authorization": f"Bearer {token}",
            "a+b": "1",
            "x-latin": "caf\xe9",
            "x-control": "a\tb",
        },
    )

    assert reply.status == 404, reply.text
    assert reply.json()["code"] == 5
