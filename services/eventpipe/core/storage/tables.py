"""The tables of every service, without the configurable table prefix: names, column
families and GC rules. ``eventpipe.core.bigtable.ensure_tables`` creates them."""

from __future__ import annotations

from datetime import timedelta

from eventpipe.core.bigtable import FamilySpec, TableSpec
from eventpipe.core.storage.attributes import ATTRIBUTE_FAMILIES, ENRICHED_FAMILIES

# The pipeline's tables.
RAW_EVENTS_TABLE = "events"
DIMENSIONS_TABLE = "dimensions"
ENRICHED_EVENTS_TABLE = "enriched_events"
ENTITY_METRICS_TABLE = "entity_metrics"
ENTITY_PROFILES_TABLE = "entity_profiles"
EVENT_IDS_TABLE = "event_ids"  # the store's idempotency index: (tenant_id, event_id) -> claim
ERASURES_TABLE = "erasures"  # one tombstone per erased entity (storage.erasures)
ERASURE_AUDIT_TABLE = "erasure_audit"  # who erased which entity, when, how many rows

# The enrich service's own state.
ENRICH_SPECS_TABLE = "enrich_specs"
ENRICH_JOBS_TABLE = "enrich_jobs"

META_FAMILY = "m"
COUNTS_FAMILY = "c"  # event counts by event type (int64)
VALUES_FAMILY = "v"  # numeric aggregates: "<field>.sum|min|max|count"


def _family_specs(
    names: list[str], max_age: timedelta | None, versions: int = 1
) -> tuple[FamilySpec, ...]:
    return tuple(FamilySpec(name, max_versions=versions, max_age=max_age) for name in names)


DEFAULT_KAFKA_RETENTION = timedelta(hours=168)
"""The raw topic's retention by default (``EVENTPIPE_KAFKA_RETENTION_HOURS``)."""


def erasure_retention(
    raw_retention: timedelta | None, kafka_retention: timedelta = DEFAULT_KAFKA_RETENTION
) -> timedelta | None:
    """How long an erasure tombstone is kept: the raw retention (which bounds how old an
    accepted event, backfilled or live, may be) plus the raw topic's retention (how long a
    message of before the erasure can be re-read). None (kept forever) without a raw
    retention."""
    return None if raw_retention is None else raw_retention + kafka_retention


def table_specs(
    raw_retention: timedelta | None = timedelta(days=30),
    enriched_retention: timedelta | None = timedelta(days=400),
    kafka_retention: timedelta = DEFAULT_KAFKA_RETENTION,
) -> list[TableSpec]:
    """Every table the pipeline stores into, with GC rules from the retention settings."""
    attribute_families = list(ATTRIBUTE_FAMILIES.values())
    enriched_families = list(ENRICHED_FAMILIES.values())
    return [
        TableSpec(
            RAW_EVENTS_TABLE, _family_specs([META_FAMILY, *attribute_families], raw_retention)
        ),
        TableSpec(EVENT_IDS_TABLE, _family_specs([META_FAMILY], raw_retention)),
        TableSpec(DIMENSIONS_TABLE, _family_specs([META_FAMILY, *attribute_families], None)),
        TableSpec(
            ENRICHED_EVENTS_TABLE,
            _family_specs(
                [META_FAMILY, *attribute_families, *enriched_families], enriched_retention
            ),
        ),
        TableSpec(
            ENTITY_METRICS_TABLE,
            _family_specs([META_FAMILY, COUNTS_FAMILY, VALUES_FAMILY], enriched_retention),
        ),
        TableSpec(
            ENTITY_PROFILES_TABLE,
            _family_specs([META_FAMILY, COUNTS_FAMILY, VALUES_FAMILY, *enriched_families], None),
        ),
        TableSpec(
            ERASURES_TABLE,
            _family_specs([META_FAMILY], erasure_retention(raw_retention, kafka_retention)),
        ),
        # The record of an erasure outlives it: kept until an operator removes it.
        TableSpec(ERASURE_AUDIT_TABLE, _family_specs([META_FAMILY], None)),
    ]


def enrich_table_specs() -> list[TableSpec]:
    """The enrich service's specs and job records: one family, one version, kept forever."""
    family = _family_specs([META_FAMILY], None)
    return [TableSpec(ENRICH_SPECS_TABLE, family), TableSpec(ENRICH_JOBS_TABLE, family)]
