"""Creates every topic and table the pipeline needs, idempotently (`make up`, service start)."""

from __future__ import annotations

from datetime import timedelta

from eventpipe.core.bigtable import ensure_tables
from eventpipe.core.config import CommonSettings
from eventpipe.core.kafka import TopicSpec, ensure_topics
from eventpipe.core.storage.tables import table_specs


def topic_specs(settings: CommonSettings) -> list[TopicSpec]:
    retention_ms = str(settings.kafka_retention_hours * 3600 * 1000)
    durable = {
        "min.insync.replicas": str(settings.topic_min_insync_replicas),
        "retention.ms": retention_ms,
        "unclean.leader.election.enable": "false",
    }
    rf = settings.topic_replication_factor
    return [
        TopicSpec(
            settings.raw_topic,
            settings.raw_topic_partitions,
            rf,
            {**durable, "compression.type": "producer", "max.message.bytes": "8388608"},
        ),
        TopicSpec(settings.dead_letter_topic, 1, rf, durable),
        TopicSpec(
            settings.entity_changes_topic, 1, rf, {**durable, "retention.ms": str(24 * 3600 * 1000)}
        ),
    ]


def ensure_topology(settings: CommonSettings) -> None:
    """Creates the Kafka topics and Bigtable tables (with GC rules) that are missing."""
    ensure_topics(settings, topic_specs(settings))
    ensure_tables(
        settings,
        table_specs(
            raw_retention=timedelta(days=settings.raw_retention_days),
            enriched_retention=timedelta(days=settings.enriched_retention_days),
        ),
    )
