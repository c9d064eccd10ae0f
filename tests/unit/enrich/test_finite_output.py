"""Finite numbers out: a double that is not finite is never written, and is counted."""

from __future__ import annotations

import math

import pytest
from enrich.adapters import bigtable_io
from enrich.adapters.bigtable_io import BucketAggregate
from eventpipe.core.storage.attributes import decode_double, decode_int
from eventpipe.core.storage.tables import VALUES_FAMILY
from prometheus_client import REGISTRY

INF = math.inf


@pytest.fixture(autouse=True)
def empty_tally() -> None:
    bigtable_io.take_non_finite_counts()


def counter_value(where: str) -> float:
    value = REGISTRY.get_sample_value("eventpipe_enrich_non_finite_values_total", {"where": where})
    return value or 0.0


def aggregate(values: dict[str, tuple[float, float, float, int]]) -> BucketAggregate:
    return BucketAggregate("t", "e1", "d", 0, {"buy": 2}, values, 10, 20)


def test_a_metric_sum_that_overflowed_is_absent_and_tallied_while_the_rest_is_written() -> None:
    row = bigtable_io.metric_row(
        aggregate({"amount": (INF, 1.7e308, 1.7e308, 2), "quantity": (3.0, 1.0, 2.0, 2)})
    )
    values = {q: v for (family, q), v in row.cells.items() if family == VALUES_FAMILY}
    assert b"amount.sum" not in values
    assert decode_double(values[b"amount.max"]) == 1.7e308
    assert decode_int(values[b"amount.count"]) == 2
    assert decode_double(values[b"quantity.sum"]) == 3.0
    assert all(math.isfinite(decode_double(v)) for q, v in values.items() if b".count" not in q)
    assert bigtable_io.take_non_finite_counts() == {bigtable_io.METRIC: 1}
    assert bigtable_io.take_non_finite_counts() == {}


def test_an_absent_sum_reads_back_as_not_finite_so_totals_built_on_it_are_not_finite() -> None:
    row = bigtable_io.metric_row(aggregate({"amount": (math.nan, 1.0, 2.0, 2)}))
    decoded = bigtable_io.decode_metric_cells(row.cells)  # the one row shape, as read back
    assert decoded is not None
    total, low, high, count = decoded.values["amount"]
    assert math.isnan(total)
    assert (low, high, count) == (1.0, 2.0, 2)


def test_an_enriched_row_leaves_out_a_non_finite_derived_field_and_names_where() -> None:
    record = {
        "row_key": b"k",
        "tenant_id": "t",
        "event_id": "ev1",
        "event_type": "buy",
        "entity_id": "e1",
        "event_time": 5,
        "ingest_time": 6,
        "unmatched": [],
        "s": {},
        "i": {},
        "d": {"amount": 1.7e308},
        "b": {},
        "t": {},
        "enriched": {("d", "twice"): INF, ("d", "products.price"): math.nan, ("d", "ok"): 2.0},
    }
    row = bigtable_io.enriched_row(record, spec_version=1)
    assert ("xd", b"twice") not in row.cells
    assert ("xd", b"products.price") not in row.cells
    assert decode_double(row.cells[("xd", b"ok")]) == 2.0
    assert decode_double(row.cells[("d", b"amount")]) == 1.7e308
    assert bigtable_io.take_non_finite_counts() == {
        bigtable_io.DERIVED_FIELD: 1,
        bigtable_io.EVENT_FIELD: 1,
    }


def test_tallies_handed_back_by_tasks_reach_the_prometheus_counter() -> None:
    before = counter_value(bigtable_io.PROFILE_TOTAL)
    bigtable_io.count_non_finite({bigtable_io.PROFILE_TOTAL: 3, bigtable_io.METRIC: 0})
    assert counter_value(bigtable_io.PROFILE_TOTAL) == before + 3
