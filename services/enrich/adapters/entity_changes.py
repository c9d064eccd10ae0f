"""Announces the entities a job rewrote on the entity-changes topic (query drops its cache)."""

from __future__ import annotations

import logging

from eventpipe.core.config import CommonSettings
from eventpipe.core.entity_changes import EntityChange, EntityChangePublisher

log = logging.getLogger(__name__)


class JobOutputAnnouncer:
    """The job manager's ``on_entities_changed``: one change per rewritten entity."""

    def __init__(self, settings: CommonSettings) -> None:
        self._publisher = EntityChangePublisher(settings)

    def publish(self, entities: list[tuple[str, str]]) -> None:
        if not entities:
            return
        unconfirmed = self._publisher.publish(
            [EntityChange.now(tenant_id, entity_id) for tenant_id, entity_id in entities]
        )
        if unconfirmed:
            # Outputs are already written; a lost invalidation only delays cache freshness
            # until the query cache's TTL, so this is logged, not raised.
            log.warning("entity changes not confirmed", extra={"pending": unconfirmed})
