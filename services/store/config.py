"""Settings of the store service (environment prefix EVENTPIPE_STORE_)."""

from __future__ import annotations

from eventpipe.core.config import (
    CommonSettings,
    EventLimitSettings,
    PageTokenSettings,
    ServiceSettings,
)
from pydantic import Field
from pydantic_settings import SettingsConfigDict


class StoreSettings(ServiceSettings, EventLimitSettings, PageTokenSettings):
    """The store service's settings; shared ones are in eventpipe.core.config.CommonSettings,
    the event-time limits (re-validation) in EventLimitSettings."""

    model_config = SettingsConfigDict(env_prefix="EVENTPIPE_STORE_", extra="ignore", frozen=True)

    port: int = Field(50052, ge=0, le=65535, description="gRPC port; 0 picks a free one.")
    metrics_port: int = Field(
        9102, ge=0, le=65535, description="Prometheus /metrics port; 0 picks a free one."
    )

    consumer_enabled: bool = Field(
        True, description="Run the Kafka -> Bigtable consumer daemon inside this process."
    )
    consumer_group: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9._-]+$",
        description="Consumer group id; default '<topic_prefix>store'.",
    )
    batch_max_messages: int = Field(
        1000, ge=1, le=10_000, description="Most messages written per mutate_rows batch."
    )
    batch_max_wait_ms: int = Field(
        50, ge=1, le=10_000, description="Longest a partial batch waits for more messages."
    )
    write_attempt_timeout_seconds: float = Field(
        10.0, gt=0, le=300, description="Deadline of one mutate_rows call."
    )
    backoff_initial_seconds: float = Field(
        0.2, gt=0, le=60, description="First retry delay after a failed write."
    )
    backoff_max_seconds: float = Field(
        10.0, gt=0, le=600, description="Cap of the exponential retry delay."
    )
    fetch_queue_max_kbytes: int = Field(
        16_384,
        ge=1024,
        le=1_048_576,
        description="librdkafka prefetch bound (queued.max.messages.kbytes): caps memory.",
    )
    session_timeout_ms: int = Field(
        45_000,
        ge=3000,
        le=300_000,
        description="Kafka session timeout: how soon a killed consumer's partitions move on.",
    )

    def group_id(self, common: CommonSettings) -> str:
        return self.consumer_group or f"{common.topic_prefix}store"
