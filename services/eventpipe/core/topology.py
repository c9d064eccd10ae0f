"""Every topic and table the pipeline needs: created idempotently (`make up`, service start,
the Kubernetes Job ``eventpipe admin ensure-topology``) and checked by the services' init
containers (``eventpipe admin await-topology``), which keeps them waiting until the Job is done."""

from __future__ import annotations

from datetime import timedelta

from eventpipe.core.bigtable import TableSpec, ensure_tables, instance
from eventpipe.core.config import CommonSettings
from eventpipe.core.kafka import TopicSpec, admin_client, ensure_topics
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


def topology_table_specs(settings: CommonSettings) -> list[TableSpec]:
    """The tables, with GC rules from the retention settings (the erasure tombstones outlive
    raw rows by the raw topic's retention, so a replay cannot bring an erased entity back)."""
    return table_specs(
        raw_retention=timedelta(days=settings.raw_retention_days),
        enriched_retention=timedelta(days=settings.enriched_retention_days),
        kafka_retention=timedelta(hours=settings.kafka_retention_hours),
    )


def ensure_topology(settings: CommonSettings) -> None:
    """Creates the Kafka topics and Bigtable tables (with GC rules) that are missing."""
    ensure_topics(settings, topic_specs(settings))
    ensure_tables(settings, topology_table_specs(settings))


def missing_topology(
    settings: CommonSettings, *, tables: bool = True, timeout: float = 10.0
) -> list[str]:
    """What is not there yet ("topic <name>", "table <name>"); empty once everything is.

    Only reads: a pod that may not create topics or tables (every service in production) can
    ask. ``tables=False`` asks Kafka alone, for a pod with no Bigtable access (ingest).
    """
    topics = set(admin_client(settings).list_topics(timeout=timeout).topics)
    missing = [f"topic {spec.name}" for spec in topic_specs(settings) if spec.name not in topics]
    if tables:
        present = {table.table_id for table in instance(settings, admin=True).list_tables()}
        for spec in topology_table_specs(settings):
            if settings.table_prefix + spec.name not in present:
                missing.append(f"table {settings.table_prefix + spec.name}")
    return missing
