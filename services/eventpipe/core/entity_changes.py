"""The entity-changes topic: enrichment announces which (tenant, entity) views it rewrote,
and the query service drops its cached answers for them.

- key: ``<tenant_id>#<entity_id>`` (the same key as the raw topic);
- value: UTF-8 JSON ``{"tenant_id": ..., "entity_id": ..., "changed_at_micros": ...}``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

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
