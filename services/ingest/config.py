"""Settings of the ingest service (environment prefix EVENTPIPE_INGEST_)."""

from __future__ import annotations

from eventpipe.core.config import EventLimitSettings, ServiceSettings
from eventpipe.core.server import workers_field
from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict


class IngestSettings(ServiceSettings, EventLimitSettings):
    """The ingest service's settings; shared ones are in eventpipe.core.config.CommonSettings."""

    model_config = SettingsConfigDict(env_prefix="EVENTPIPE_INGEST_", extra="ignore", frozen=True)

    port: int = Field(50051, ge=0, le=65535, description="gRPC port; 0 picks a free one.")
    metrics_port: int = Field(
        9101, ge=0, le=65535, description="Prometheus /metrics port; 0 picks a free one."
    )
    workers: int = workers_field()
    max_batch_bytes: int = Field(
        4 * 1024 * 1024,
        ge=1024,
        description="Largest serialized batch (IngestEvents / one StreamEvents message).",
    )
    max_in_flight_events: int = Field(
        50_000,
        ge=1,
        description="Events produced but not yet confirmed by Kafka, across all RPCs; "
        "beyond it unary RPCs answer RESOURCE_EXHAUSTED and streams stop reading.",
    )
    max_in_flight_bytes: int = Field(
        64 * 1024 * 1024,
        ge=64 * 1024,
        description="Serialized bytes produced but not yet confirmed, across all RPCs.",
    )
    produce_timeout_seconds: float = Field(
        10.0,
        ge=0.5,
        le=300,
        description="How long Kafka may take to confirm a write (librdkafka message.timeout.ms); "
        "after it the event is reported UNAVAILABLE, never acknowledged.",
    )
    retry_after_seconds: float = Field(
        1.0, gt=0, le=60, description="Retry advice sent with RESOURCE_EXHAUSTED."
    )
    stream_window_batches: int = Field(
        8,
        ge=1,
        le=256,
        description="Batches of one StreamEvents call produced but not yet answered; "
        "beyond it the server stops reading, so HTTP/2 flow control holds the client back.",
    )
    stream_capacity_wait_seconds: float = Field(
        30.0,
        ge=0,
        description="How long a stream waits for in-flight capacity before RESOURCE_EXHAUSTED.",
    )

    stream_idle_timeout_seconds: float = Field(
        60.0,
        gt=0,
        le=86400,
        description="A StreamEvents call that sent no batch for this long, with every batch "
        "answered, is closed with UNAVAILABLE, which frees its slot and its threads.",
    )

    @model_validator(mode="after")
    def _batch_fits_in_a_message(self) -> IngestSettings:
        if self.max_batch_bytes > self.max_message_bytes:
            raise ValueError(
                f"max_batch_bytes ({self.max_batch_bytes}) must not exceed "
                f"max_message_bytes ({self.max_message_bytes})"
            )
        return self
