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


def test_a_remote_spark_master_without_an_auth_secret_fails_at_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("EVENTPIPE_ENRICH_SPARK_MASTER", "spark://spark-master:7077")
    with pytest.raises(ValidationError, match=r"EVENTPIPE_ENRICH_SPARK_AUTH_SECRET\) is required"):
        EnrichSettings()
    monkeypatch.setenv("EVENTPIPE_ENRICH_SPARK_AUTH_SECRET", "a-secret-of-16-chars")
    settings = EnrichSettings()
    assert settings.spark_master == "spark://spark-master:7077"
    assert settings.spark_auth_secret is not None
    assert "a-secret" not in repr(settings)


def test_a_local_master_needs_no_auth_secret_and_a_short_secret_is_refused() -> None:
    assert EnrichSettings(spark_master="local[2]").spark_auth_secret is None
    with pytest.raises(ValidationError, match="at least 16 items"):
        EnrichSettings(spark_master="spark://m:7077", spark_auth_secret="short")


def test_a_remote_master_session_runs_with_spark_authenticate_that_extra_conf_cannot_undo() -> None:
    from enrich.adapters.spark.session import SparkSettings, session_conf

    remote = SparkSettings(
        master="spark://spark-master:7077",
        extra_conf=(("spark.authenticate", "false"), ("spark.executor.memory", "1g")),
        auth_secret="a-secret-of-16-chars",
    )
    conf = dict(session_conf(remote))  # the last setting of a key wins, as in the builder
    assert conf["spark.authenticate"] == "true"
    assert conf["spark.authenticate.secret"] == "a-secret-of-16-chars"
    assert conf["spark.executor.memory"] == "1g"
    assert "a-secret" not in repr(remote)
    with pytest.raises(ValueError, match="is not local"):
        session_conf(SparkSettings(master="spark://spark-master:7077"))
    local = dict(session_conf(SparkSettings(master="local[2]", auth_secret="unused-secret-16c")))
    assert "spark.authenticate" not in local
    assert "spark.authenticate.secret" not in local


def test_the_schedule_rescan_interval_comes_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert EnrichSettings().scheduler_rescan_seconds == 30.0
    monkeypatch.setenv("EVENTPIPE_ENRICH_SCHEDULER_RESCAN_SECONDS", "5")
    assert EnrichSettings().scheduler_rescan_seconds == 5.0
    with pytest.raises(ValidationError):
        EnrichSettings(scheduler_rescan_seconds=0)
