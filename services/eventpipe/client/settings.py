"""The client's defaults, each overridable by an ``EVENTPIPE_CLIENT_*`` environment variable
(so a command such as ``eventpipe ingest`` can be tuned without code); arguments given in code
win over both. docs/client.md lists them."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from eventpipe.client.producer import MAX_BATCH_EVENTS, ProducerSettings
from eventpipe.client.retry import RetryPolicy


class ClientSettings(BaseSettings):
    """Defaults of ``EventPipeClient`` and its producers."""

    model_config = SettingsConfigDict(env_prefix="EVENTPIPE_CLIENT_", extra="ignore", frozen=True)

    timeout_seconds: float = Field(default=30.0, gt=0)
    """Seconds one try of a unary call may take."""
    retry_initial_backoff_seconds: float = Field(default=0.1, gt=0)
    """First backoff when the server gave no RetryInfo; doubles on each retry."""
    retry_max_backoff_seconds: float = Field(default=10.0, gt=0)
    """Largest backoff between two tries."""
    retry_deadline_seconds: float = Field(default=120.0, ge=0)
    """No retry starts later than this after the first try (for the producer: after send)."""
    max_batch_events: int = Field(default=500, ge=1, le=MAX_BATCH_EVENTS)
    """Events per IngestEvents batch."""
    max_batch_bytes: int = Field(default=3 * 1024 * 1024, ge=1, le=4 * 1024 * 1024 - 64 * 1024)
    """Serialized bytes per batch (the service refuses requests over 4 MiB)."""
    linger_seconds: float = Field(default=0.05, ge=0)
    """How long a batch waits to fill before it goes anyway."""
    max_buffered_events: int = Field(default=10_000, ge=1)
    """Events waiting or in flight per producer; send() blocks beyond."""
    max_buffered_bytes: int = Field(default=32 * 1024 * 1024, ge=1)
    """Serialized bytes waiting or in flight per producer; send() blocks beyond."""
    max_block_seconds: float = Field(default=60.0, ge=0)
    """How long send() blocks on a full buffer before it raises BufferFull (0: at once)."""
    max_in_flight_batches: int = Field(default=2, ge=1)
    """Batches sent at the same time (sender threads) per producer."""

    def retry(self) -> RetryPolicy:
        return RetryPolicy(
            initial_backoff=self.retry_initial_backoff_seconds,
            max_backoff=self.retry_max_backoff_seconds,
            deadline=self.retry_deadline_seconds,
        )

    def producer(self) -> ProducerSettings:
        return ProducerSettings(
            max_batch_events=self.max_batch_events,
            max_batch_bytes=self.max_batch_bytes,
            linger_seconds=self.linger_seconds,
            max_buffered_events=self.max_buffered_events,
            max_buffered_bytes=self.max_buffered_bytes,
            max_block_seconds=self.max_block_seconds,
            max_in_flight_batches=self.max_in_flight_batches,
            retry=self.retry(),
        )
