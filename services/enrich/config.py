"""Settings of the enrich service (environment prefix EVENTPIPE_ENRICH_)."""

from __future__ import annotations

import os
from pathlib import Path

from eventpipe.core.config import EventLimitSettings, PageTokenSettings, ServiceSettings
from pydantic import Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict

from enrich.domain.fair_shares import Quotas


def default_spark_jars() -> str:
    """Where ``python -m eventpipe.stack.spark_connectors`` puts the jars (the tooling's cache
    rule, repeated here because the runtime never imports the tooling; a unit test holds the
    two equal)."""
    override = os.environ.get("EVENTPIPE_CACHE_DIR")
    root = Path(override) if override else Path.home() / ".cache" / "eventpipe"
    return str(root.expanduser().resolve() / "spark-connectors" / "spark-4.2.0" / "jars")


def _entries(value: str) -> list[str]:
    return [item.strip() for item in value.split(";") if item.strip()]


class EnrichSettings(ServiceSettings, EventLimitSettings, PageTokenSettings):
    """The enrich service's settings; shared ones are in eventpipe.core.config.CommonSettings."""

    model_config = SettingsConfigDict(env_prefix="EVENTPIPE_ENRICH_", extra="ignore", frozen=True)

    port: int = Field(50053, ge=0, le=65535, description="gRPC port; 0 picks a free one.")
    metrics_port: int = Field(
        9103, ge=0, le=65535, description="Prometheus /metrics port; 0 picks a free one."
    )
    spark_master: str = Field(
        "local[*]",
        pattern=r"^(local(\[(\*|\d+)(,\d+)?\])?|spark://.+|k8s://.+|yarn)$",
        description="Spark master: local[*] (embedded), spark://host:port (a standalone "
        "cluster) or k8s://https://...; any but local needs spark_auth_secret.",
    )
    spark_auth_secret: SecretStr | None = Field(
        None,
        min_length=16,
        description="Shared secret of spark.authenticate (at least 16 characters), set when "
        "spark_master is not local; the Spark master and workers must have the same one. "
        "Required then: the service refuses to start without it.",
    )
    spark_partitions: int = Field(
        8, ge=1, le=10_000, description="Key-range read tasks per job (ranges are grouped)."
    )
    spark_shuffle_partitions: int = Field(8, ge=1, le=10_000, description="Shuffle partitions.")
    broadcast_max_rows: int = Field(
        100_000,
        ge=0,
        description="Dimensions with at most this many versions are broadcast; larger ones are "
        "joined by a shuffle.",
    )
    spark_conf: str = Field(
        "",
        pattern=r"^\s*([^=;\s][^=;]*=[^;]*)?(;\s*[^=;\s][^=;]*=[^;]*)*;?\s*$",
        description="Extra Spark settings, 'key=value;key=value' (executor memory, k8s image...).",
    )
    run_dir: str = Field(
        ".run/enrich", min_length=1, description="Streaming checkpoints live under this folder."
    )
    max_concurrent_jobs: int = Field(
        2, ge=1, le=64, description="Batch jobs and scheduled windows run at once (slots)."
    )
    tenant_max_running_jobs: int = Field(
        1,
        ge=1,
        le=64,
        description="Of those slots, at most this many run one tenant's work at once; the "
        "queue is served round-robin across tenants.",
    )
    tenant_max_batch_jobs: int = Field(
        4,
        ge=1,
        le=10_000,
        description="A tenant's batch jobs pending or running; a create beyond is refused "
        "with RESOURCE_EXHAUSTED.",
    )
    tenant_max_scheduled_jobs: int = Field(
        50,
        ge=1,
        le=100_000,
        description="A tenant's active scheduled jobs; a create beyond is refused with "
        "RESOURCE_EXHAUSTED.",
    )
    max_streams: int = Field(
        8,
        ge=1,
        le=1000,
        description="Streaming jobs running at once in the process, each on a thread of its "
        "own (never a batch slot); a create beyond is refused with RESOURCE_EXHAUSTED.",
    )
    tenant_max_streams: int = Field(
        2,
        ge=1,
        le=1000,
        description="A tenant's streaming jobs; a create beyond is refused with "
        "RESOURCE_EXHAUSTED.",
    )
    cancel_grace_seconds: float = Field(
        5.0,
        gt=0,
        le=300,
        description="How long a cancelled job's Spark driver call may take to stop by itself "
        "before its driver thread is stopped (planning is not interrupted otherwise).",
    )
    session_probe_timeout_seconds: float = Field(
        60.0,
        gt=0,
        le=600,
        description="How long the check of the Spark session after a failed job may take "
        "before the session counts as broken and is rebuilt.",
    )
    scheduler_tick_seconds: float = Field(
        1.0, gt=0, le=60, description="How often due scheduled windows are looked for."
    )
    scheduler_retry_initial_seconds: float = Field(
        5.0,
        gt=0,
        description="Wait before retrying a failed scheduled window; doubles per failure.",
    )
    scheduler_retry_max_seconds: float = Field(
        600.0,
        gt=0,
        description="Longest wait between retries of a failed window (also capped at the "
        "schedule's interval).",
    )
    scheduler_rescan_seconds: float = Field(
        30.0,
        gt=0,
        le=3600,
        description="How often a replica looks for scheduled jobs other replicas started "
        "(created after it started), so it can take their windows over.",
    )
    scheduler_claim_lease_seconds: float = Field(
        120.0,
        gt=0,
        le=3600,
        description="Lease of a replica's claim on a scheduled window, renewed while it runs; "
        "after a replica dies, its window is taken over within this time.",
    )
    dimension_refresh_seconds: float = Field(
        30.0, ge=0, description="How long a streaming job reuses the dimension versions it read."
    )
    spark_jars: str = Field(
        default_factory=lambda: default_spark_jars(),
        description="Jars for spark.jars (the Kafka source), ';'-separated; a folder stands "
        "for every *.jar in it; empty = none. Default: the folder `make tools` fills "
        "($EVENTPIPE_CACHE_DIR/spark-connectors/spark-4.2.0/jars). The service never resolves "
        "them itself (python -m eventpipe.stack.spark_connectors does).",
    )

    @model_validator(mode="after")
    def _spark_jars_exist(self) -> EnrichSettings:
        # A path set on purpose must exist; the default folder may be missing on a machine
        # that never ran `make tools` (batch jobs work; a streaming job's source then fails).
        if "spark_jars" in self.model_fields_set:
            for entry in _entries(self.spark_jars):
                if not Path(entry).exists():
                    raise ValueError(f"spark_jars: {entry} does not exist")
        return self

    @model_validator(mode="after")
    def _remote_spark_is_authenticated(self) -> EnrichSettings:
        # Executors outside this process reach the driver over Spark's RPC: never unauthenticated.
        if not self.spark_master.startswith("local") and self.spark_auth_secret is None:
            raise ValueError(
                f"spark_auth_secret (EVENTPIPE_ENRICH_SPARK_AUTH_SECRET) is required with "
                f"spark_master {self.spark_master}: Spark's RPC runs with spark.authenticate"
            )
        return self

    @model_validator(mode="after")
    def _scheduler_settings_fit(self) -> EnrichSettings:
        # The scheduler renews a running window's claim at a tick past half of the lease.
        if self.scheduler_claim_lease_seconds < 4 * self.scheduler_tick_seconds:
            raise ValueError("scheduler_claim_lease_seconds must be at least 4 scheduler ticks")
        if self.scheduler_retry_max_seconds < self.scheduler_retry_initial_seconds:
            raise ValueError("scheduler_retry_max_seconds must not be below the initial retry")
        if self.tenant_max_running_jobs > self.max_concurrent_jobs:
            raise ValueError("tenant_max_running_jobs must not exceed max_concurrent_jobs")
        if self.tenant_max_streams > self.max_streams:
            raise ValueError("tenant_max_streams must not exceed max_streams")
        return self

    def quotas(self) -> Quotas:
        return Quotas(
            max_running_jobs=self.max_concurrent_jobs,
            tenant_max_running_jobs=self.tenant_max_running_jobs,
            tenant_max_batch_jobs=self.tenant_max_batch_jobs,
            tenant_max_scheduled_jobs=self.tenant_max_scheduled_jobs,
            max_streams=self.max_streams,
            tenant_max_streams=self.tenant_max_streams,
        )

    def spark_jar_paths(self) -> tuple[str, ...]:
        """The jars of ``spark_jars``, folders expanded to their sorted ``*.jar``."""
        jars: list[str] = []
        for entry in _entries(self.spark_jars):
            path = Path(entry)
            if path.is_dir():
                jars.extend(str(jar) for jar in sorted(path.glob("*.jar")))
            elif path.exists():
                jars.append(str(path))
        return tuple(jars)

    def extra_spark_conf(self) -> tuple[tuple[str, str], ...]:
        pairs = []
        for item in self.spark_conf.split(";"):
            if item.strip():
                key, _, value = item.partition("=")
                pairs.append((key.strip(), value.strip()))
        return tuple(pairs)
