"""Settings of the enrich service (environment prefix EVENTPIPE_ENRICH_)."""

from __future__ import annotations

from eventpipe.core.config import ServiceSettings
from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict


class EnrichSettings(ServiceSettings):
    """The enrich service's settings; shared ones are in eventpipe.core.config.CommonSettings."""

    model_config = SettingsConfigDict(env_prefix="EVENTPIPE_ENRICH_", extra="ignore", frozen=True)

    port: int = Field(50053, ge=0, le=65535, description="gRPC port; 0 picks a free one.")
    metrics_port: int = Field(
        9103, ge=0, le=65535, description="Prometheus /metrics port; 0 picks a free one."
    )
    spark_master: str = Field(
        "local[*]",
        pattern=r"^(local(\[(\*|\d+)(,\d+)?\])?|spark://.+|k8s://.+|yarn)$",
        description="Spark master: local[*] (embedded), spark://host:port or k8s://https://...",
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
        2, ge=1, le=64, description="Batch jobs and scheduled windows run at once."
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
    resolve_connectors: bool = Field(
        True, description="Resolve the Spark Kafka source with Maven at start (first run only)."
    )

    @model_validator(mode="after")
    def _scheduler_settings_fit(self) -> EnrichSettings:
        # The scheduler renews a running window's claim at a tick past half of the lease.
        if self.scheduler_claim_lease_seconds < 4 * self.scheduler_tick_seconds:
            raise ValueError("scheduler_claim_lease_seconds must be at least 4 scheduler ticks")
        if self.scheduler_retry_max_seconds < self.scheduler_retry_initial_seconds:
            raise ValueError("scheduler_retry_max_seconds must not be below the initial retry")
        return self

    def extra_spark_conf(self) -> tuple[tuple[str, str], ...]:
        pairs = []
        for item in self.spark_conf.split(";"):
            if item.strip():
                key, _, value = item.partition("=")
                pairs.append((key.strip(), value.strip()))
        return tuple(pairs)
