"""Consumes the entity-changes topic and drops the changed entities' cached answers.

Every replica must see every change, so each process reads all partitions itself: a consumer
group of its own, no commits, positioned at the current end of each partition when it starts
(its cache is empty then, so nothing older matters).

The cache is only used while this consumer is caught up: it starts suspended, resumes once the
consumer is positioned, and is emptied and suspended again when the brokers are unreachable;
it resumes when the consumer has read up to the end it can see again. So an answer is served
from the cache only while invalidations flow, and the staleness bound (docs/query.md) holds.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, Protocol

from confluent_kafka import Consumer, KafkaError, TopicPartition
from eventpipe.core.config import CommonSettings
from eventpipe.core.entity_changes import EntityChange
from eventpipe.core.kafka import consumer_config

from query import metrics

log = logging.getLogger(__name__)


class Invalidator(Protocol):
    """What the listener drives: the cache."""

    def invalidate_entity(self, tenant_id: str, entity_id: str) -> int: ...
    def clear(self) -> None: ...
    def suspend(self) -> None: ...
    def resume(self) -> None: ...


ConsumerFactory = Callable[[dict[str, Any]], Any]


class EntityChangeListener:
    """A BackgroundWorker (eventpipe.core.server) that applies entity changes to the cache."""

    def __init__(
        self,
        common: CommonSettings,
        cache: Invalidator,
        *,
        poll_seconds: float = 0.1,
        fetch_wait_ms: int = 100,
        retry_seconds: float = 1.0,
        consumer_factory: ConsumerFactory = Consumer,
    ) -> None:
        self._topic = common.entity_changes_topic
        self._cache = cache
        self._poll_seconds = poll_seconds
        self._retry_seconds = retry_seconds
        self._config = consumer_config(
            common,
            f"{common.topic_prefix}query-cache-{uuid.uuid4().hex}",
            **{
                "fetch.wait.max.ms": fetch_wait_ms,
                "fetch.min.bytes": 1,
                "error_cb": self._on_error,
                "socket.keepalive.enable": True,
                "reconnect.backoff.max.ms": 1000,
            },
        )
        self._consumer_factory = consumer_factory
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._next_offsets: dict[int, int] = {}
        self._brokers_down = False
        self.live = threading.Event()
        """Set while the cache is in use (consumer positioned and caught up)."""
        self.applied = 0

    # ---------------------------------------------------------------- BackgroundWorker
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="query-entity-changes", daemon=True)
        self._thread.start()

    def stop(self, timeout: float) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    # ---------------------------------------------------------------- the loop
    def _on_error(self, error: KafkaError) -> None:
        if error.code() == KafkaError._ALL_BROKERS_DOWN:
            self._brokers_down = True

    def _set_live(self, live: bool) -> None:
        if live and not self.live.is_set():
            self._cache.resume()
            self.live.set()
            log.info("entity changes caught up: cache on")
        elif not live and self.live.is_set():
            self.live.clear()
            self._cache.suspend()
            log.warning("entity changes unreachable: cache emptied and bypassed")

    def _run(self) -> None:
        consumer = self._consumer_factory(self._config)
        try:
            while not self._stop.is_set() and not self._assign_at_end(consumer):
                self._stop.wait(self._retry_seconds)
            self._set_live(not self._stop.is_set())
            next_check = 0.0
            while not self._stop.is_set():
                message = consumer.poll(self._poll_seconds)
                if message is not None:
                    self._handle(message)
                if self._brokers_down:
                    self._brokers_down = False
                    self._set_live(False)
                if not self.live.is_set() and time.monotonic() >= next_check:
                    next_check = time.monotonic() + self._retry_seconds
                    if self._caught_up(consumer):
                        self._set_live(True)
        except Exception:
            log.exception("entity-changes listener failed: cache bypassed")
            self._set_live(False)
        finally:
            consumer.close()

    def _assign_at_end(self, consumer: Any) -> bool:
        try:
            topic = consumer.list_topics(self._topic, timeout=5).topics[self._topic]
            if topic.error is not None or not topic.partitions:
                raise RuntimeError(f"topic {self._topic}: {topic.error}")
            assignment = []
            for partition in sorted(topic.partitions):
                _low, high = consumer.get_watermark_offsets(
                    TopicPartition(self._topic, partition), timeout=5, cached=False
                )
                self._next_offsets[partition] = high
                assignment.append(TopicPartition(self._topic, partition, high))
            consumer.assign(assignment)
            return True
        except Exception as exc:
            log.warning(
                "cannot position the entity-changes consumer yet", extra={"error": str(exc)}
            )
            return False

    def _caught_up(self, consumer: Any) -> bool:
        """True when every partition's end (as the broker says now) has been read."""
        try:
            for partition, next_offset in self._next_offsets.items():
                _low, high = consumer.get_watermark_offsets(
                    TopicPartition(self._topic, partition), timeout=2, cached=False
                )
                if next_offset < high:
                    return False
            return True
        except Exception:
            return False

    def _handle(self, message: Any) -> None:
        error = message.error()
        if error is not None:
            if error.code() != KafkaError._PARTITION_EOF:
                log.warning("entity-changes consumer error", extra={"error": str(error)})
            return
        self._next_offsets[message.partition()] = message.offset() + 1
        try:
            change = EntityChange.decode(message.value())
        except Exception:
            # Some entity changed, but which is unknown: only dropping everything is safe.
            log.warning(
                "undecodable entity change: emptying the cache", extra={"offset": message.offset()}
            )
            self._cache.clear()
            return
        self._cache.invalidate_entity(change.tenant_id, change.entity_id)
        self.applied += 1
        delay = time.time() - change.changed_at_micros / 1e6
        if delay >= 0:
            metrics.INVALIDATION_DELAY.observe(delay)
