"""The enrich service's scheduler settings fail fast when they cannot work together."""

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
