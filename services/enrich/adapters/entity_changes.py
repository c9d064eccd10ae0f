"""Announces the entities a job rewrote on the entity-changes topic (query drops its cache)."""

from __future__ import annotations

import logging

from confluent_kafka import Producer
from eventpipe.core.config import CommonSettings
from eventpipe.core.entity_changes import EntityChange
from eventpipe.core.kafka import producer_config

log = logging.getLogger(__name__)


class EntityChangePublisher:
    """Announces rewritten entities on the entity-changes topic (query drops its cache)."""

    def __init__(self, settings: CommonSettings) -> None:
        self.topic = settings.entity_changes_topic
        self._producer = Producer(producer_config(settings))

    def publish(self, entities: list[tuple[str, str]]) -> None:
        if not entities:
            return
        for tenant_id, entity_id in entities:
            change = EntityChange.now(tenant_id, entity_id)
            self._producer.produce(self.topic, key=change.key(), value=change.encode())
            self._producer.poll(0)
        remaining = self._producer.flush(10)
        if remaining:
            # Outputs are already written; a lost invalidation only delays cache freshness
            # until the query cache's TTL, so this is logged, not raised.
            log.warning("entity changes not confirmed", extra={"pending": remaining})
