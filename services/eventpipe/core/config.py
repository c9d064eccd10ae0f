"""Typed settings from environment variables, validated at start-up.

Every service reads ``CommonSettings`` (prefix ``EVENTPIPE_``) plus its own subclass of
``ServiceSettings`` (prefix ``EVENTPIPE_<SERVICE>_``). A bad value stops the process at
start with a message naming the variable, instead of failing later under load.
"""

from __future__ import annotations

import sys
from datetime import timedelta
from pathlib import Path
from typing import Literal, TypeVar

from pydantic import Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from eventpipe.core.validation import EventLimits

DEFAULT_PORTS = {"ingest": 50051, "store": 50052, "enrich": 50053, "query": 50054}
DEFAULT_METRICS_PORTS = {"ingest": 9101, "store": 9102, "enrich": 9103, "query": 9104}


class ConfigError(SystemExit):
    """Raised (as a clean exit with status 2) when the environment holds a bad setting."""

    def __init__(self, message: str) -> None:
        super().__init__(2)
        self.message = message

    def __str__(self) -> str:
        return self.message


class CommonSettings(BaseSettings):
    """Settings shared by every service and by the command-line tool."""

    model_config = SettingsConfigDict(env_prefix="EVENTPIPE_", extra="ignore", frozen=True)

    kafka_bootstrap_servers: str = Field(
        "127.0.0.1:9092", min_length=1, description="Kafka bootstrap servers, host:port[,...]."
    )
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT",
        description="security.protocol of every Kafka client; a managed Kafka wants SASL_SSL.",
    )
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        None, description="sasl.mechanism; required with a SASL_* protocol, refused without."
    )
    kafka_sasl_username: str | None = Field(
        None, min_length=1, description="sasl.username; required with a SASL_* protocol."
    )
    kafka_sasl_password: SecretStr | None = Field(
        None, description="sasl.password (a secret); required with a SASL_* protocol."
    )
    kafka_ssl_ca_location: str | None = Field(
        None,
        min_length=1,
        description="ssl.ca.location: a PEM file of the CAs that sign the brokers' certificates "
        "(only with SSL or SASL_SSL; unset trusts the system's CAs).",
    )
    topic_prefix: str = Field(
        "eventpipe.",
        pattern=r"^[A-Za-z0-9._-]*$",
        description="Prefix of every Kafka topic; tests use it to isolate themselves.",
    )
    bigtable_project: str = Field("eventpipe-local", min_length=1, description="GCP project.")
    bigtable_instance: str = Field("eventpipe", min_length=1, description="Bigtable instance.")
    table_prefix: str = Field(
        "eventpipe_",
        pattern=r"^[A-Za-z0-9_.-]*$",
        description="Prefix of every Bigtable table; tests use it to isolate themselves.",
    )
    raw_topic_partitions: int = Field(
        6, ge=1, le=1000, description="Partitions of the raw-events topic (fixed once created)."
    )
    topic_replication_factor: int = Field(
        1, ge=1, le=10, description="Replication factor of created topics; 3 in production."
    )
    topic_min_insync_replicas: int = Field(
        1, ge=1, le=10, description="min.insync.replicas of created topics; 2 in production."
    )
    kafka_retention_hours: int = Field(
        168, ge=1, description="How long Kafka keeps raw events (replay window for the store)."
    )
    raw_retention_days: int = Field(
        30, ge=1, description="Bigtable GC max age of raw events, by event time."
    )
    enriched_retention_days: int = Field(
        400, ge=1, description="Bigtable GC max age of enriched events and aggregates."
    )
    log_level: str = Field(
        "INFO", pattern=r"^(DEBUG|INFO|WARNING|ERROR)$", description="Root log level."
    )

    @model_validator(mode="after")
    def _kafka_security_is_whole(self) -> CommonSettings:
        """A half-configured secure client fails here, at start, not at its first connection."""
        protocol = f"EVENTPIPE_KAFKA_SECURITY_PROTOCOL={self.kafka_security_protocol}"
        sasl_fields = {
            "EVENTPIPE_KAFKA_SASL_MECHANISM": self.kafka_sasl_mechanism,
            "EVENTPIPE_KAFKA_SASL_USERNAME": self.kafka_sasl_username,
            "EVENTPIPE_KAFKA_SASL_PASSWORD": self.kafka_sasl_password,
        }
        if self.kafka_security_protocol.startswith("SASL_"):
            missing = [name for name, value in sasl_fields.items() if not value]
            if missing:
                raise ValueError(f"{protocol} needs {', '.join(missing)}")
        else:
            given = [name for name, value in sasl_fields.items() if value is not None]
            if given:
                raise ValueError(
                    f"{', '.join(given)} set, but {protocol} does not use SASL "
                    "(SASL_SSL or SASL_PLAINTEXT does)"
                )
        ca = self.kafka_ssl_ca_location
        if ca is not None:
            if not self.kafka_security_protocol.endswith("SSL"):
                raise ValueError(
                    f"EVENTPIPE_KAFKA_SSL_CA_LOCATION set, but {protocol} does not use TLS "
                    "(SSL or SASL_SSL does)"
                )
            if not Path(ca).is_file():
                raise ValueError(f"EVENTPIPE_KAFKA_SSL_CA_LOCATION={ca} is not a file")
        return self

    @property
    def raw_topic(self) -> str:
        """The topic ingest writes and direct producers produce to."""
        return f"{self.topic_prefix}events.raw.v1"

    @property
    def dead_letter_topic(self) -> str:
        """Where the store consumer sends messages it cannot store."""
        return f"{self.topic_prefix}events.dlq.v1"

    @property
    def entity_changes_topic(self) -> str:
        """Where enrichment announces (tenant, entity) keys whose views changed."""
        return f"{self.topic_prefix}entities.changed.v1"


class ServiceSettings(BaseSettings):
    """Settings every gRPC service has; subclasses set ``env_prefix``."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    host: str = Field("0.0.0.0", description="Address the gRPC server binds.")
    port: int = Field(0, ge=0, le=65535, description="gRPC port; 0 picks a free one.")
    metrics_port: int = Field(
        0, ge=0, le=65535, description="Prometheus /metrics port; 0 picks a free one."
    )
    max_workers: int = Field(16, ge=1, le=512, description="gRPC handler threads.")
    workers: int = Field(
        1,
        ge=1,
        le=64,
        description="Server processes sharing the gRPC port (SO_REUSEPORT) under one "
        "supervisor; 1 serves from this process alone. See docs/serving.md.",
    )
    shutdown_grace_seconds: float = Field(
        20.0, ge=0, le=600, description="How long in-flight RPCs may finish on SIGTERM."
    )
    max_message_bytes: int = Field(
        8 * 1024 * 1024, ge=1024, description="Largest gRPC message accepted."
    )
    max_streams: int = Field(
        64,
        ge=1,
        le=4096,
        description="Streaming RPCs open at once; each holds a thread of the streams' own pool "
        "(apart from the max_workers unary threads) for its life. Beyond it RESOURCE_EXHAUSTED.",
    )
    max_streams_per_tenant: int = Field(
        16,
        ge=1,
        le=4096,
        description="Streaming RPCs one tenant (the token's, else the first message's) may hold "
        "open; beyond it RESOURCE_EXHAUSTED.",
    )
    max_streams_per_connection: int = Field(
        32,
        ge=1,
        le=4096,
        description="Streaming RPCs one client connection may hold open; beyond it "
        "RESOURCE_EXHAUSTED.",
    )


class PageTokenSettings(BaseSettings):
    """The HMAC key of a service's page tokens, mixed into its settings (store, enrich).

    Unset, each process signs with a random key of its own, so a token works only against the
    replica that issued it; ``require_page_token_secret`` (true in Kubernetes) refuses to start
    without the shared secret. The variables carry the service's prefix, e.g.
    ``EVENTPIPE_STORE_PAGE_TOKEN_SECRET`` and ``EVENTPIPE_STORE_REQUIRE_PAGE_TOKEN_SECRET``.
    """

    page_token_secret: SecretStr | None = Field(
        None,
        description="HMAC key of the service's page tokens (at least 16 characters); unset "
        "means a random per-process key (tokens then only work against the replica that "
        "issued them, and not after a restart).",
    )
    require_page_token_secret: bool = Field(
        False,
        description="Refuse to start without page_token_secret (true in production, where every "
        "replica must sign with the one shared secret).",
    )

    @model_validator(mode="after")
    def _shared_page_token_secret(self) -> PageTokenSettings:
        secret = self.page_token_secret
        variable = f"{self.model_config.get('env_prefix', '')}PAGE_TOKEN_SECRET".upper()
        if secret is not None and len(secret.get_secret_value()) < 16:
            raise ValueError(f"page_token_secret ({variable}) must be at least 16 characters")
        if secret is None and self.require_page_token_secret:
            raise ValueError(
                f"page_token_secret is required (set {variable}, the same on every replica); "
                "without it each replica signs with a random key of its own"
            )
        return self


class EventLimitSettings(BaseSettings):
    """The event-time limits, one definition for every service that judges an event.

    Mixed into a service's settings class (``class StoreSettings(ServiceSettings,
    EventLimitSettings)``), so each field reads that service's prefix: the variables stay
    ``EVENTPIPE_<SERVICE>_EVENT_MAX_FUTURE_SECONDS`` and so on. Ingest judges against its own
    clock, the store and streaming enrichment against a message's trusted ``ingest_time``
    (the two trust-window fields); keep the store's and enrich's values equal. The backfill
    horizon is one variable for all of them, ``EVENTPIPE_BACKFILL_HORIZON_DAYS``, since the
    store must accept what ingest accepted.
    """

    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    event_max_future_seconds: float = Field(
        300.0,
        ge=0,
        le=7 * 86400,
        description="event_time at most this far after the reference time (ingest: the "
        "server clock; store and enrich: the message's ingest_time); clock skew allowance.",
    )
    event_max_age_days: float = Field(
        30.0,
        gt=0,
        le=3650,
        description="event_time at most this old at the reference time; keep it within the "
        "raw Bigtable retention.",
    )
    ingest_time_max_lead_seconds: float = Field(
        60.0,
        ge=0,
        le=3600,
        description="A raw-topic message's ingest_time is trusted up to this far after its "
        "Kafka timestamp and after the reader's clock (clock skew).",
    )
    ingest_time_max_lag_seconds: float = Field(
        900.0,
        ge=0,
        le=86_400,
        description="A raw-topic message's ingest_time is trusted up to this far before its "
        "Kafka timestamp (time spent in a producer before the broker stamped it).",
    )
    backfill_horizon_days: float | None = Field(
        None,
        gt=0,
        le=3650,
        validation_alias="EVENTPIPE_BACKFILL_HORIZON_DAYS",
        description="How old an event_time a backfill (IngestEvents with backfill, admin scope; "
        "header eventpipe-backfill: 1 on the raw topic) may carry. Unset: the raw retention "
        "(EVENTPIPE_RAW_RETENTION_DAYS), or the enriched one if shorter. Above either, start-up "
        "fails: those rows' GC rules would collect the loaded events at once.",
    )

    @model_validator(mode="after")
    def _backfill_within_retention(self) -> EventLimitSettings:
        """Raw and enriched cells are timestamped with the event time, and their GC max age
        counts from it: history older than a table's retention would be collected at once."""
        horizon = self.backfill_horizon_days
        if horizon is None:
            return self  # the retention itself, see backfill_horizon
        try:
            common = load_settings(CommonSettings)
        except ConfigError:
            return self  # CommonSettings is loaded on its own at start, and says what is wrong
        for name, days in (
            ("EVENTPIPE_RAW_RETENTION_DAYS", common.raw_retention_days),
            ("EVENTPIPE_ENRICHED_RETENTION_DAYS", common.enriched_retention_days),
        ):
            if horizon > days:
                raise ValueError(
                    f"EVENTPIPE_BACKFILL_HORIZON_DAYS={horizon:g} exceeds {name}={days}: "
                    "backfilled rows would be older than that table's GC max age; raise the "
                    "retention or lower the horizon"
                )
        return self

    def backfill_horizon(self) -> timedelta:
        """The backfill horizon in force: the setting, or else the shorter retention."""
        if self.backfill_horizon_days is not None:
            return timedelta(days=self.backfill_horizon_days)
        common = load_settings(CommonSettings)
        return timedelta(days=min(common.raw_retention_days, common.enriched_retention_days))

    def event_limits(self) -> EventLimits:
        """The limits as the validation and topic-contract code takes them."""
        return EventLimits(
            max_future=timedelta(seconds=self.event_max_future_seconds),
            max_age=timedelta(days=self.event_max_age_days),
            ingest_time_max_lead=timedelta(seconds=self.ingest_time_max_lead_seconds),
            ingest_time_max_lag=timedelta(seconds=self.ingest_time_max_lag_seconds),
            backfill_horizon=self.backfill_horizon(),
        )


SettingsT = TypeVar("SettingsT", bound=BaseSettings)


def load_settings(cls: type[SettingsT]) -> SettingsT:
    """Builds settings from the environment, turning validation errors into ConfigError."""
    try:
        return cls()
    except ValidationError as exc:
        prefix = cls.model_config.get("env_prefix", "")
        lines = [f"invalid configuration for {cls.__name__}:"]
        for error in exc.errors():
            field = ".".join(str(part) for part in error["loc"])
            if not field:
                # A rule across fields (a model validator): its message names the variables.
                lines.append(f"  {error['msg']}")
                continue
            lines.append(f"  {prefix}{field.upper()}: {error['msg']} (got {error.get('input')!r})")
        raise ConfigError("\n".join(lines)) from None


def exit_on_config_error(exc: ConfigError) -> None:
    print(exc.message, file=sys.stderr)
    raise SystemExit(2)
