"""Binds the Spark engine and the entity-changes publisher to the job manager's Engine."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from confluent_kafka import Producer
from eventpipe.core.config import CommonSettings
from eventpipe.core.entity_changes import EntityChange
from eventpipe.core.kafka import producer_config
from eventpipe.core.validation import EventLimits

from enrich.adapters.spark.streaming import StreamingHandle, StreamingRequest
from enrich.adapters.spark_engine import BatchRequest, SparkEngine
from enrich.domain.work import BatchWork, Counters, StreamWork
from enrich.ports import RunningStream

log = logging.getLogger(__name__)


class EntityChangePublisher:
    """Announces rewritten entities on the entity-changes topic (query drops its cache)."""

    def __init__(self, settings: CommonSettings) -> None:
        self.topic = settings.entity_changes_topic
        self._producer = Producer(producer_config(settings))

    def publish(self, entities: list[tuple[str, str]]) -> None:
        for tenant_id, entity_id in entities:
            change = EntityChange.now(tenant_id, entity_id)
            self._producer.produce(self.topic, key=change.key(), value=change.encode())
            self._producer.poll(0)
        remaining = self._producer.flush(10)
        if remaining:
            # Outputs are already written; a lost invalidation only delays cache freshness
            # until the query cache's TTL, so this is logged, not raised.
            log.warning("entity changes not confirmed", extra={"pending": remaining})


class RestartingStream:
    """A streaming job's query that, when the Spark session under it broke and was rebuilt,
    starts again from its checkpoint on the new session (at most ``max_restarts`` times):
    another tenant breaking the session does not fail this one's stream."""

    def __init__(self, engine: SparkEngine, request: StreamingRequest, max_restarts: int = 3):
        self.engine = engine
        self.request = request
        self.restarts_left = max_restarts
        self._stopped = False
        self._lock = threading.Lock()
        self.engine.ensure_session()
        self._generation = engine.generation
        self._handle: StreamingHandle = engine.start_streaming(request)

    def is_active(self) -> bool:
        with self._lock:
            if self._handle.is_active():
                return True
            if self._stopped or self.restarts_left <= 0:
                return False
            if not self.engine.recover(self._generation):
                return False  # the query died by itself: error() says why
            self.restarts_left -= 1
            log.warning(
                "restarting a stream on the rebuilt Spark session",
                extra={"job_id": self.request.job_id},
            )
            self._generation = self.engine.generation
            self._handle = self.engine.start_streaming(self.request)
            return True

    def error(self) -> str | None:
        return self._handle.error()

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            handle = self._handle
        handle.stop()


class SparkJobEngine:
    def __init__(
        self,
        engine: SparkEngine,
        publisher: EntityChangePublisher | None,
        settings: CommonSettings,
        checkpoint_root: Path,
        dimension_refresh_seconds: float,
        event_limits: EventLimits | None = None,
    ) -> None:
        self.event_limits = event_limits or EventLimits()
        self.engine = engine
        self.publisher = publisher
        self.settings = settings
        self.checkpoint_root = checkpoint_root
        self.dimension_refresh_seconds = dimension_refresh_seconds

    def _changed(self, entities: list[tuple[str, str]]) -> None:
        if self.publisher is not None and entities:
            self.publisher.publish(entities)

    def run_batch(self, work: BatchWork) -> Counters:
        """Raises JobCancelled (a domain Cancelled) when ``work.cancelled`` stopped it."""
        request = BatchRequest(
            work.job_id,
            work.tenant_id,
            work.spec,
            work.start_micros,
            work.end_micros,
            cancelled=work.cancelled,
            on_progress=work.on_progress,
            on_entities_changed=self._changed,
        )
        return self.engine.run_batch(request)

    def start_stream(self, work: StreamWork) -> RunningStream:
        checkpoint = self.checkpoint_root / work.tenant_id / work.job_id
        checkpoint.mkdir(parents=True, exist_ok=True)
        request = StreamingRequest(
            work.job_id,
            work.tenant_id,
            work.spec,
            self.settings.kafka_bootstrap_servers,
            self.settings.raw_topic,
            work.trigger_seconds,
            str(checkpoint),
            dimension_refresh_seconds=self.dimension_refresh_seconds,
            event_limits=self.event_limits,
            on_batch=work.on_batch,
            on_entities_changed=self._changed,
        )
        return RestartingStream(self.engine, request)

    def cancel(self, job_id: str) -> None:
        self.engine.cancel(job_id)
