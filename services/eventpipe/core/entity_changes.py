"""The entity-changes topic: enrichment announces which (tenant, entity) views it rewrote,
and the query service drops its cached answers for them.

- key: ``<tenant_id>#<entity_id>`` (the same key as the raw topic);
- value: UTF-8 JSON ``{"tenant_id": ..., "entity_id": ..., "changed_at_micros": ...}``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass

from confluent_kafka import Producer

from eventpipe.core.config import CommonSettings
from eventpipe.core.kafka import producer_config
from eventpipe.core.topic_contract import message_key


@dataclass(frozen=True)
class EntityChange:
    """One entity whose enriched rows, profile or aggregates were rewritten."""

    tenant_id: str
    entity_id: str
    changed_at_micros: int

    @classmethod
    def now(cls, tenant_id: str, entity_id: str) -> EntityChange:
        return cls(tenant_id, entity_id, time.time_ns() // 1000)

    def key(self) -> bytes:
        return message_key(self.tenant_id, self.entity_id)

    def encode(self) -> bytes:
        return json.dumps(
            {
                "tenant_id": self.tenant_id,
                "entity_id": self.entity_id,
                "changed_at_micros": self.changed_at_micros,
            },
            separators=(",", ":"),
        ).encode()

    @classmethod
    def decode(cls, raw: bytes) -> EntityChange:
        data = json.loads(raw)
        return cls(str(data["tenant_id"]), str(data["entity_id"]), int(data["changed_at_micros"]))


class EntityChangePublisher:
    """Announces changed entities on the entity-changes topic and waits for Kafka's acks.

    For every writer that rewrites or deletes an entity's views (the store's ``DeleteEntity``,
    enrichment's jobs through ``enrich.adapters.entity_changes``).
    """

    def __init__(self, settings: CommonSettings) -> None:
        self.topic = settings.entity_changes_topic
        self._producer = Producer(producer_config(settings, **{"linger.ms": 0}))

    def publish(self, changes: Sequence[EntityChange], timeout: float = 10.0) -> int:
        """Produces the changes; returns how many Kafka did not confirm within ``timeout``."""
        failed = 0

        def on_delivery(error: object, _message: object) -> None:
            nonlocal failed
            if error is not None:
                failed += 1

        for change in changes:
            self._producer.produce(
                self.topic, key=change.key(), value=change.encode(), on_delivery=on_delivery
            )
        return self._producer.flush(timeout) + failed
