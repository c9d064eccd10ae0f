"""Failed calls raise the project's one error hierarchy, with violations and retry advice."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from eventpipe.client import (
    EventPipeClient,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    RetryPolicy,
    Unavailable,
    Violation,
)
from eventpipe.client.retry import call_with_retry
from eventpipe.core import errors as core_errors
from eventpipe.query.v1 import query_pb2, query_pb2_grpc
from eventpipe.store.v1 import store_pb2, store_pb2_grpc

from tests.unit.client.fakes import serving


class RaisingQuery(query_pb2_grpc.QueryServiceServicer):
    """Raises the next domain error of its list on each GetEntity."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.calls = 0

    def GetEntity(self, request: Any, context: Any) -> query_pb2.GetEntityResponse:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return query_pb2.GetEntityResponse(
            profile=query_pb2.EntityProfile(entity_id=request.entity_id, event_count=3)
        )


def _get(servicer: Any, retry: RetryPolicy | None = None) -> query_pb2.EntityProfile:
    with (
        serving(query=servicer) as address,
        EventPipeClient(
            address, tenant_id="acme", retry=retry or RetryPolicy(deadline=0)
        ) as client,
    ):
        return client.entities.get("user-1")


def test_invalid_argument_carries_every_field_violation() -> None:
    violations = [Violation("entity_id", "is required"), Violation("tenant_id", "bad")]
    with pytest.raises(InvalidArgument) as raised:
        _get(RaisingQuery(core_errors.invalid_fields(violations)))
    assert raised.value.violations == violations
    assert raised.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert isinstance(raised.value.__cause__, grpc.RpcError)


def test_resource_exhausted_carries_the_retry_delay_of_retry_info() -> None:
    refusal = core_errors.ResourceExhausted("queue full", retry_after_seconds=2.5)
    with pytest.raises(ResourceExhausted) as raised:
        _get(RaisingQuery(refusal))
    assert raised.value.retry_after_seconds == 2.5


@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        (core_errors.NotFound("no profile"), NotFound),
        (core_errors.PermissionDenied("wrong tenant"), PermissionDenied),
        (core_errors.Unavailable("kafka down"), Unavailable),
        (RuntimeError("a bug"), Internal),
    ],
)
def test_each_status_code_raises_its_class_of_the_hierarchy(
    raised: Exception, expected: type[Exception]
) -> None:
    with pytest.raises(expected) as caught:
        _get(RaisingQuery(raised))
    assert isinstance(caught.value, core_errors.EventPipeError)


def test_a_read_is_retried_after_unavailable_until_it_succeeds() -> None:
    servicer = RaisingQuery(
        core_errors.Unavailable("down", retry_after_seconds=0.01),
        core_errors.ResourceExhausted("busy", retry_after_seconds=0.01),
    )
    profile = _get(servicer, RetryPolicy(deadline=10))
    assert profile.event_count == 3
    assert servicer.calls == 3


def test_a_read_gives_up_with_the_last_error_at_the_deadline() -> None:
    servicer = RaisingQuery(*[core_errors.Unavailable("down") for _ in range(100)])
    with pytest.raises(Unavailable):
        _get(servicer, RetryPolicy(initial_backoff=0.01, max_backoff=0.02, deadline=0.2))
    assert 1 < servicer.calls < 100


def test_invalid_argument_is_not_retried() -> None:
    servicer = RaisingQuery(core_errors.invalid("entity_id", "bad"))
    with pytest.raises(InvalidArgument):
        _get(servicer, RetryPolicy(deadline=10))
    assert servicer.calls == 1


def test_retry_waits_the_retry_info_delay_and_jitters_above_it() -> None:
    waits: list[float] = []
    policy = RetryPolicy(deadline=100, random=lambda low, high: high)
    attempts = iter(
        [
            core_errors.ResourceExhausted("busy", retry_after_seconds=3.0),
            core_errors.Unavailable("x"),
        ]
    )

    def call() -> str:
        error = next(attempts, None)
        if error is not None:
            raise error
        return "done"

    assert call_with_retry(call, policy, sleep=waits.append) == "done"
    # RetryInfo's 3 s plus at most 20 % jitter; then the backoff of attempt 1 (0.1 * 2).
    assert waits == [pytest.approx(3.6), pytest.approx(0.2)]


def test_backoff_without_retry_info_is_capped_and_jittered_from_zero() -> None:
    lows: list[float] = []

    def pick(low: float, high: float) -> float:
        lows.append(low)
        return high

    policy = RetryPolicy(initial_backoff=1, multiplier=2, max_backoff=5, random=pick)
    assert [policy.delay(n, None) for n in range(5)] == [1, 2, 4, 5, 5]
    assert set(lows) == {0.0}


def test_the_token_goes_with_every_call_as_a_bearer_header() -> None:
    seen: list[str] = []

    class Recording(store_pb2_grpc.StoreServiceServicer):
        def GetConsumerStatus(self, request: Any, context: Any) -> Any:
            seen.append(dict(context.invocation_metadata()).get("authorization", ""))
            return store_pb2.GetConsumerStatusResponse()

    with serving(store=Recording()) as address, EventPipeClient(address, token="t0k") as client:
        client.store.get_consumer_status(store_pb2.GetConsumerStatusRequest())
    assert seen == ["Bearer t0k"]


def test_helpers_without_a_tenant_say_so() -> None:
    with EventPipeClient("127.0.0.1:1") as client, pytest.raises(ValueError, match="tenant"):
        client.entities.get("user-1")
