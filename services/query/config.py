"""Settings of the query service (environment prefix EVENTPIPE_QUERY_)."""

from __future__ import annotations

import logging

from eventpipe.core.config import ServiceSettings
from eventpipe.core.server import workers_field
from pydantic import Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict

log = logging.getLogger(__name__)

# Fine on a laptop, where one process serves; every replica of a deployment must share one
# real secret (EVENTPIPE_QUERY_PAGE_TOKEN_SECRET), or a token minted by one replica would be
# refused by the next, and anyone who reads this file could forge tokens.
LOCAL_DEV_PAGE_TOKEN_SECRET = "eventpipe-local-dev-page-token-secret-not-for-production"


class QuerySettings(ServiceSettings):
    """The query service's settings; shared ones are in eventpipe.core.config.CommonSettings."""

    model_config = SettingsConfigDict(env_prefix="EVENTPIPE_QUERY_", extra="ignore", frozen=True)

    port: int = Field(50054, ge=0, le=65535, description="gRPC port; 0 picks a free one.")
    metrics_port: int = Field(
        9104, ge=0, le=65535, description="Prometheus /metrics port; 0 picks a free one."
    )
    workers: int = workers_field()
    page_token_secret: SecretStr = Field(
        SecretStr(LOCAL_DEV_PAGE_TOKEN_SECRET),
        description="HMAC key of page tokens; production MUST set it, the same on every replica.",
    )
    require_page_token_secret: bool = Field(
        False, description="Refuse to start with the local-dev secret (set true in production)."
    )
    cache_max_entries: int = Field(
        100_000, ge=0, description="Most cached answers kept; 0 turns the cache off."
    )
    cache_max_bytes: int = Field(
        256 * 1024 * 1024, ge=0, description="Estimated memory the cached answers may use."
    )
    cache_ttl_seconds: float = Field(
        300.0, gt=0, le=86_400, description="Safety net: an answer is never served older than this."
    )
    invalidation_poll_seconds: float = Field(
        0.1, gt=0, le=5, description="How long the entity-changes consumer waits per poll."
    )
    invalidation_fetch_wait_ms: int = Field(
        100,
        ge=1,
        le=5000,
        description="Broker-side wait for new entity changes (fetch.wait.max.ms).",
    )
    bigtable_timeout_seconds: float = Field(
        5.0, gt=0, le=60, description="Deadline of one Bigtable read, retries included."
    )
    single_flight_wait_seconds: float = Field(
        10.0, gt=0, le=60, description="How long a request waits for another's read of its key."
    )

    @model_validator(mode="after")
    def _production_secret(self) -> QuerySettings:
        secret = self.page_token_secret.get_secret_value()
        if len(secret) < 16:
            raise ValueError("page_token_secret must be at least 16 characters")
        if self.require_page_token_secret and secret == LOCAL_DEV_PAGE_TOKEN_SECRET:
            raise ValueError(
                "page_token_secret is the local-dev default; set EVENTPIPE_QUERY_PAGE_TOKEN_SECRET"
            )
        return self

    @property
    def uses_local_dev_secret(self) -> bool:
        return self.page_token_secret.get_secret_value() == LOCAL_DEV_PAGE_TOKEN_SECRET
