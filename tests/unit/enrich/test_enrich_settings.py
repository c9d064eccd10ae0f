"""The enrich service's settings fail fast when they cannot work together, and map to the
job manager's quotas and the streaming decode's limits."""

from __future__ import annotations

import pytest
from enrich.config import EnrichSettings
from pydantic import ValidationError


def test_the_default_scheduler_settings_are_valid() -> None:
    settings = EnrichSettings()
    assert settings.scheduler_claim_lease_seconds >= 4 * settings.scheduler_tick_seconds
    assert settings.scheduler_retry_initial_seconds <= settings.scheduler_retry_max_seconds


def test_a_claim_lease_the_ticker_cannot_renew_in_time_is_refused() -> None:
    with pytest.raises(ValidationError, match="at least 4 scheduler ticks"):
        EnrichSettings(scheduler_tick_seconds=30, scheduler_claim_lease_seconds=60)


def test_a_retry_cap_below_the_first_retry_is_refused() -> None:
    with pytest.raises(ValidationError, match="must not be below the initial retry"):
        EnrichSettings(scheduler_retry_initial_seconds=60, scheduler_retry_max_seconds=10)


def test_a_tenant_share_above_the_process_limit_is_refused() -> None:
    with pytest.raises(ValidationError, match="tenant_max_running_jobs must not exceed"):
        EnrichSettings(max_concurrent_jobs=2, tenant_max_running_jobs=3)
    with pytest.raises(ValidationError, match="tenant_max_streams must not exceed"):
        EnrichSettings(max_streams=2, tenant_max_streams=3)


def test_quotas_and_event_limits_come_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("EVENTPIPE_ENRICH_TENANT_MAX_STREAMS", "3")
    monkeypatch.setenv("EVENTPIPE_ENRICH_TENANT_MAX_BATCH_JOBS", "7")
    monkeypatch.setenv("EVENTPIPE_ENRICH_EVENT_MAX_FUTURE_SECONDS", "60")
    settings = EnrichSettings()
    quotas = settings.quotas()
    assert (quotas.tenant_max_streams, quotas.tenant_max_batch_jobs) == (3, 7)
    assert (quotas.max_running_jobs, quotas.tenant_max_running_jobs, quotas.max_streams) == (
        2,
        1,
        8,
    )
    assert settings.event_limits().max_future_micros == 60_000_000
