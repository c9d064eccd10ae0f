"""The client's defaults come from EVENTPIPE_CLIENT_* variables; arguments in code win."""

from __future__ import annotations

import pytest
from eventpipe.client import EventPipeClient, RetryPolicy


def test_environment_variables_set_the_producer_and_retry_defaults(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("EVENTPIPE_CLIENT_MAX_BATCH_EVENTS", "7")
    monkeypatch.setenv("EVENTPIPE_CLIENT_RETRY_DEADLINE_SECONDS", "3")
    with EventPipeClient("127.0.0.1:1", tenant_id="acme") as client:
        assert client.producer_settings.max_batch_events == 7
        assert client.retry.deadline == 3
        assert client.events.settings.retry.deadline == 3


def test_a_retry_policy_in_code_wins_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVENTPIPE_CLIENT_RETRY_DEADLINE_SECONDS", "3")
    with EventPipeClient("127.0.0.1:1", retry=RetryPolicy(deadline=9)) as client:
        assert client.producer_settings.retry.deadline == 9


def test_a_bad_value_names_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVENTPIPE_CLIENT_MAX_BATCH_EVENTS", "5000")
    with pytest.raises(ValueError, match="max_batch_events"):
        EventPipeClient("127.0.0.1:1")


def test_an_unknown_service_target_is_refused() -> None:
    with pytest.raises(ValueError, match="ingset"):
        EventPipeClient("127.0.0.1:1", service_targets={"ingset": "127.0.0.1:2"})
