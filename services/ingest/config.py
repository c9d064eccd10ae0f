"""Settings of the ingest service (environment prefix EVENTPIPE_INGEST_)."""

from __future__ import annotations

from eventpipe.core.config import ServiceSettings
from pydantic import Field
from pydantic_settings import SettingsConfigDict


class IngestSettings(ServiceSettings):
    """The ingest service's settings; shared ones are in eventpipe.core.config.CommonSettings."""

    model_config = SettingsConfigDict(env_prefix="EVENTPIPE_INGEST_", extra="ignore", frozen=True)

    port: int = Field(50051, ge=0, le=65535, description="gRPC port; 0 picks a free one.")
    metrics_port: int = Field(
        9101, ge=0, le=65535, description="Prometheus /metrics port; 0 picks a free one."
    )
