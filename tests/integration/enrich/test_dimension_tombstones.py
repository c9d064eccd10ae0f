"""A dimension record deleted as a version (the store's DeleteDimensionRecord tombstone, cell
``m:deleted``) on real Spark and the emulator: the as-of join matches the old version before
the tombstone, nothing from it on, and a later version again; checked against a plain as-of
search written here."""

from __future__ import annotations

from typing import Any

from enrich.adapters.spark_engine import SparkEngine
from enrich.adapters.spec_codec import spec_from_proto
from enrich.domain.spec import validate_spec
from enrich.domain.work import BatchWork
from eventpipe.common.v1 import event_pb2
from eventpipe.core.storage.erasures import dimension_tombstone_row
from eventpipe.core.storage.keys import row_key_for_event
from eventpipe.core.storage.rows import enriched_fields_from_cells, latest_cells
from eventpipe.core.storage.tables import DIMENSIONS_TABLE, ENRICHED_EVENTS_TABLE, RAW_EVENTS_TABLE
from eventpipe.core.storage.times import cell_time, micros, timestamp_from_micros
from google.cloud.bigtable.row import DirectRow
from google.cloud.bigtable.table import Table

from tests.integration.enrich import dataset
from tests.integration.enrich.dataset import BASE, DAY, HOUR, DimVersion

# users/e1: gold from BASE - DAY, deleted at BASE + 8h, silver again from BASE + 16h.
VERSIONS: list[tuple[int, str | None]] = [
    (BASE - DAY, "gold"),
    (BASE + 8 * HOUR, None),
    (BASE + 16 * HOUR, "silver"),
]


def expected_tier(event_micros: int) -> str | None:
    valid = [(start, tier) for start, tier in VERSIONS if start <= event_micros]
    return max(valid)[1] if valid else None


def test_an_as_of_join_sees_the_old_version_before_a_tombstone_and_no_match_from_it_on(
    engine: SparkEngine, tables: dict[str, Table], isolation: Any
) -> None:
    tenant = isolation.tenant_id
    events = []
    for hour in range(24):
        event = event_pb2.Event(
            tenant_id=tenant, event_id=f"ev{hour:02d}", event_type="view", entity_id="e1"
        )
        event.attributes["product_id"].string_value = "p0"
        # On the hour, a microsecond before it, and so on: the bounds are where it breaks.
        event_micros = BASE + hour * HOUR - (1 if hour % 2 else 0)
        event.event_time.CopyFrom(timestamp_from_micros(event_micros))
        event.ingest_time.CopyFrom(timestamp_from_micros(event_micros + 1000))
        events.append(event)
    dataset.write_events(tables[RAW_EVENTS_TABLE], events)
    dataset.write_dimension(
        tables[DIMENSIONS_TABLE],
        tenant,
        "users",
        [DimVersion("e1", start, {"tier": tier}) for start, tier in VERSIONS if tier],
    )
    dataset.write_dimension(
        tables[DIMENSIONS_TABLE],
        tenant,
        "products",
        [DimVersion("p0", BASE - DAY, {"price": 10.0, "category": "c0"})],
    )
    tombstone = dimension_tombstone_row(tenant, "users", "e1", VERSIONS[1][0])
    row = DirectRow(tombstone.key)
    for (family, qualifier), value in tombstone.cells.items():
        row.set_cell(family, qualifier, value, cell_time(tombstone.timestamp_micros))
    assert tables[DIMENSIONS_TABLE].mutate_rows([row])[0].code == 0

    spec = validate_spec(spec_from_proto(dataset.test_spec()), version=1)
    engine.run_batch(BatchWork("job-tombstones", tenant, spec, BASE - HOUR, BASE + DAY))

    enriched = {
        bytes(r.row_key): latest_cells(r) for r in tables[ENRICHED_EVENTS_TABLE].read_rows()
    }
    assert len(enriched) == len(events)
    seen = set()
    for event in events:
        event_micros = micros(event.event_time)
        cells = enriched[row_key_for_event(tenant, "e1", event_micros, event.event_id)]
        fields = enriched_fields_from_cells(cells)
        unmatched = cells[("m", b"unmatched")].decode().split(",")
        want = expected_tier(event_micros)
        got = fields["users.tier"].string_value if "users.tier" in fields else None
        assert got == want, (event.event_id, event_micros - BASE)
        assert ("users" in unmatched) is (want is None), event.event_id
        seen.add(want)
    assert seen == {"gold", None, "silver"}
