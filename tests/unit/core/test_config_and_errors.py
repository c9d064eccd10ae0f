"""Typed config fails fast; domain errors become rich gRPC statuses."""

from __future__ import annotations

import grpc
import pytest
from eventpipe.core.config import CommonSettings, ConfigError, load_settings
from eventpipe.core.errors import InvalidArgument, NotFound, ResourceExhausted, Violation
from eventpipe.core.interceptors import status_for
from google.rpc import error_details_pb2, status_pb2


def test_a_bad_setting_stops_start_up_with_a_message_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("EVENTPIPE_RAW_TOPIC_PARTITIONS", "zero")
    with pytest.raises(ConfigError) as caught:
        load_settings(CommonSettings)
    assert "EVENTPIPE_RAW_TOPIC_PARTITIONS" in caught.value.message


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVENTPIPE_TOPIC_PREFIX", "t1.")
    settings = load_settings(CommonSettings)
    assert settings.raw_topic == "t1.events.raw.v1"


def _details(status: grpc.Status) -> status_pb2.Status:
    raw = dict(status.trailing_metadata)["grpc-status-details-bin"]
    return status_pb2.Status.FromString(raw)


def test_an_invalid_argument_carries_its_field_violations() -> None:
    error = InvalidArgument(
        "bad", violations=[Violation("event_time", "is required"), Violation("event_id", "x")]
    )
    status = status_for(error)
    assert status.code == grpc.StatusCode.INVALID_ARGUMENT
    bad_request = error_details_pb2.BadRequest()
    assert _details(status).details[0].Unpack(bad_request)
    assert [v.field for v in bad_request.field_violations] == ["event_time", "event_id"]


def test_overload_carries_retry_advice() -> None:
    status = status_for(ResourceExhausted("queue full", retry_after_seconds=1.5))
    assert status.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    retry = error_details_pb2.RetryInfo()
    assert _details(status).details[0].Unpack(retry)
    assert retry.retry_delay.seconds == 1 and retry.retry_delay.nanos == 500_000_000


def test_other_errors_keep_their_code_and_message() -> None:
    status = status_for(NotFound("no such entity"))
    assert status.code == grpc.StatusCode.NOT_FOUND
    assert status.details == "no such entity"


def test_a_rule_across_settings_is_reported_by_its_own_words_without_a_bare_prefix(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from store.config import StoreSettings

    monkeypatch.setenv("EVENTPIPE_STORE_REQUIRE_PAGE_TOKEN_SECRET", "true")
    monkeypatch.delenv("EVENTPIPE_STORE_PAGE_TOKEN_SECRET", raising=False)
    with pytest.raises(ConfigError) as failure:
        load_settings(StoreSettings)
    assert "EVENTPIPE_STORE_:" not in failure.value.message
    assert "EVENTPIPE_STORE_PAGE_TOKEN_SECRET" in failure.value.message
