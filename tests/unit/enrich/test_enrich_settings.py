"""The enrich service's settings fail fast when they cannot work together, and map to the
job manager's quotas and the streaming decode's limits."""

from __future__ import annotations

from pathlib import Path

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


def test_the_default_spark_jars_folder_is_the_one_the_tooling_fills(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from eventpipe.stack.spark_connectors import connector_jars_dir

    monkeypatch.setenv("EVENTPIPE_CACHE_DIR", str(tmp_path))
    assert EnrichSettings().spark_jars == str(connector_jars_dir())


def test_a_spark_jars_folder_stands_for_its_jars_and_a_missing_path_is_refused(
    tmp_path: Path,
) -> None:
    (tmp_path / "b.jar").write_text("")
    (tmp_path / "a.jar").write_text("")
    (tmp_path / "notes.txt").write_text("")
    extra = tmp_path / "extra.jar"
    extra.write_text("")
    settings = EnrichSettings(spark_jars=f"{tmp_path}; {extra}")
    assert settings.spark_jar_paths() == (
        str(tmp_path / "a.jar"),
        str(tmp_path / "b.jar"),
        str(tmp_path / "extra.jar"),
        str(extra),
    )
    assert EnrichSettings(spark_jars="").spark_jar_paths() == ()
    with pytest.raises(ValidationError, match="does not exist"):
        EnrichSettings(spark_jars=str(tmp_path / "missing.jar"))
