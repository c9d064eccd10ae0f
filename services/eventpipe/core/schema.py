"""Re-exports of ``eventpipe.core.storage`` under their old names.

The storage model lives in the package ``eventpipe.core.storage`` (keys, rows, attributes,
granularity, tables, times). This module only keeps the old import path working for code
that has not moved yet (enrich's domain and Spark engine, the CLI and demo, topology, bench
and the enrich tests); new code imports the package. Delete it once nothing imports it.
"""

from __future__ import annotations

from eventpipe.core.storage.attributes import (
    ATTRIBUTE_FAMILIES,
    ENRICHED_FAMILIES,
    decode_attribute,
    decode_double,
    decode_int,
    decode_timestamp,
    encode_attribute,
    encode_double,
    encode_int,
)
from eventpipe.core.storage.granularity import Granularity
from eventpipe.core.storage.keys import (
    KEY_SEPARATOR,
    REVERSED_TIME_MAX,
    SALT_BUCKETS,
    dimension_as_of_start,
    dimension_prefix,
    entity_prefix,
    event_key_range,
    metric_key_range,
    prefix_end,
    row_key_for_dimension,
    row_key_for_event,
    row_key_for_event_id,
    row_key_for_metric,
    row_key_for_profile,
    salt,
    valid_from_of_dimension_key,
)
from eventpipe.core.storage.rows import (
    EVENT_ID_CLAIM_QUALIFIER,
    METRIC_STATS,
    PROFILE_EVENT_COUNT_QUALIFIER,
    PROFILE_FIRST_SEEN_QUALIFIER,
    PROFILE_LAST_SEEN_QUALIFIER,
    PROFILE_UPDATE_TIME_QUALIFIER,
    SPEC_VERSION_QUALIFIER,
    UNMATCHED_QUALIFIER,
    UNREADABLE_CELLS,
    BadCell,
    Cells,
    DimensionVersion,
    EventRow,
    OnBadCell,
    attributes_from_cells,
    dimension_record_to_row,
    dimension_version_from_cells,
    enriched_fields_from_cells,
    event_from_cells,
    event_id_claim_row,
    event_to_row,
    metric_value_qualifier,
    skip_bad_cells,
    skip_bad_row,
    split_metric_value_qualifier,
)
from eventpipe.core.storage.rows import latest_cells as cells_from_row_data
from eventpipe.core.storage.tables import (
    COUNTS_FAMILY,
    DIMENSIONS_TABLE,
    ENRICHED_EVENTS_TABLE,
    ENTITY_METRICS_TABLE,
    ENTITY_PROFILES_TABLE,
    EVENT_IDS_TABLE,
    META_FAMILY,
    RAW_EVENTS_TABLE,
    VALUES_FAMILY,
    table_specs,
)
from eventpipe.core.storage.times import (
    cell_time,
    cell_timestamp_micros,
    micros,
    timestamp_from_micros,
)

GRANULARITY_HOUR = Granularity.HOUR
GRANULARITY_DAY = Granularity.DAY


def bucket_start_micros(event_micros: int, granularity: str) -> int:
    """The start of the hour or (UTC) day bucket holding ``event_micros``."""
    return Granularity(granularity).bucket_start(event_micros)


__all__ = [
    "ATTRIBUTE_FAMILIES",
    "COUNTS_FAMILY",
    "DIMENSIONS_TABLE",
    "ENRICHED_EVENTS_TABLE",
    "ENRICHED_FAMILIES",
    "ENTITY_METRICS_TABLE",
    "ENTITY_PROFILES_TABLE",
    "EVENT_IDS_TABLE",
    "EVENT_ID_CLAIM_QUALIFIER",
    "GRANULARITY_DAY",
    "GRANULARITY_HOUR",
    "KEY_SEPARATOR",
    "META_FAMILY",
    "METRIC_STATS",
    "PROFILE_EVENT_COUNT_QUALIFIER",
    "PROFILE_FIRST_SEEN_QUALIFIER",
    "PROFILE_LAST_SEEN_QUALIFIER",
    "PROFILE_UPDATE_TIME_QUALIFIER",
    "RAW_EVENTS_TABLE",
    "REVERSED_TIME_MAX",
    "SALT_BUCKETS",
    "SPEC_VERSION_QUALIFIER",
    "UNMATCHED_QUALIFIER",
    "UNREADABLE_CELLS",
    "VALUES_FAMILY",
    "BadCell",
    "Cells",
    "DimensionVersion",
    "EventRow",
    "OnBadCell",
    "attributes_from_cells",
    "bucket_start_micros",
    "cell_time",
    "cell_timestamp_micros",
    "cells_from_row_data",
    "decode_attribute",
    "decode_double",
    "decode_int",
    "decode_timestamp",
    "dimension_as_of_start",
    "dimension_prefix",
    "dimension_record_to_row",
    "dimension_version_from_cells",
    "encode_attribute",
    "encode_double",
    "encode_int",
    "enriched_fields_from_cells",
    "entity_prefix",
    "event_from_cells",
    "event_id_claim_row",
    "event_key_range",
    "event_to_row",
    "metric_key_range",
    "metric_value_qualifier",
    "micros",
    "prefix_end",
    "row_key_for_dimension",
    "row_key_for_event",
    "row_key_for_event_id",
    "row_key_for_metric",
    "row_key_for_profile",
    "salt",
    "skip_bad_cells",
    "skip_bad_row",
    "split_metric_value_qualifier",
    "table_specs",
    "timestamp_from_micros",
    "valid_from_of_dimension_key",
]
