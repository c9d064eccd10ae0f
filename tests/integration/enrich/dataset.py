"""Generated events and dimension versions, writers for them, and an INDEPENDENT plain-Python
computation of what enrichment must produce (written from the spec's rules, sharing no code
with the Spark job: no AST evaluation, no bigtable_io helpers).

The spec the tests use::

    joins:    products on attributes.product_id -> price, category
              users    on entity_id             -> tier
    derived:  revenue = quantity * products.price
              label   = products.category + '/' + event_type
              half    = (quantity - 1) / 2
    metrics:  quantity, revenue, products.price
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from eventpipe.common.v1 import event_pb2
from eventpipe.core.storage.attributes import ATTRIBUTE_FAMILIES, encode_attribute
from eventpipe.core.storage.keys import (
    row_key_for_dimension,
    row_key_for_event,
    row_key_for_metric,
    row_key_for_profile,
)
from eventpipe.core.storage.rows import event_to_row
from eventpipe.core.storage.times import cell_time, micros, timestamp_from_micros
from eventpipe.enrich.v1 import enrich_pb2
from google.cloud.bigtable.row import DirectRow
from google.cloud.bigtable.table import Table

HOUR = 3_600_000_000
DAY = 24 * HOUR
BASE = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z in micros


def test_spec() -> enrich_pb2.EnrichmentSpec:
    return enrich_pb2.EnrichmentSpec(
        joins=[
            enrich_pb2.Join(
                dimension="products",
                key_field="attributes.product_id",
                fields=["price", "category"],
            ),
            enrich_pb2.Join(dimension="users", key_field="entity_id", fields=["tier"]),
        ],
        derived_fields=[
            enrich_pb2.DerivedField(name="revenue", expression="quantity * products.price"),
            enrich_pb2.DerivedField(
                name="label", expression="products.category + '/' + event_type"
            ),
            enrich_pb2.DerivedField(name="half", expression="(quantity - 1) / 2"),
        ],
        metric_fields=["quantity", "revenue", "products.price"],
    )


@dataclass
class DimVersion:
    key: str
    valid_from: int
    attributes: dict[str, Any]


@dataclass
class Dataset:
    tenant_id: str
    events: list[event_pb2.Event] = field(default_factory=list)
    dims: dict[str, list[DimVersion]] = field(default_factory=dict)


def _value(v: Any) -> event_pb2.AttributeValue:
    if isinstance(v, bool):
        return event_pb2.AttributeValue(bool_value=v)
    if isinstance(v, int):
        return event_pb2.AttributeValue(int_value=v)
    if isinstance(v, float):
        return event_pb2.AttributeValue(double_value=v)
    return event_pb2.AttributeValue(string_value=v)


def generate(tenant_id: str, events: int = 240, seed: int = 7) -> Dataset:
    """Events over two days for 8 entities; product p4 and user e7 have no dimension record,
    p3's record starts only on day two, and every product changes price on day one at noon."""
    rng = random.Random(seed)
    data = Dataset(tenant_id)
    products = []
    for n in range(4):
        start = BASE + (DAY if n == 3 else 0) - (0 if n == 3 else DAY)
        products.append(DimVersion(f"p{n}", start, {"price": 10.0 + n, "category": f"c{n % 2}"}))
        if n != 3:
            products.append(
                DimVersion(f"p{n}", BASE + 12 * HOUR, {"price": 20.0 + n, "category": f"c{n % 2}"})
            )
    users = [
        DimVersion(f"e{n}", BASE - DAY, {"tier": "gold" if n % 2 else "silver"}) for n in range(7)
    ]
    data.dims = {"products": products, "users": users}
    for n in range(events):
        t = BASE + rng.randrange(0, 2 * DAY)
        attributes: dict[str, Any] = {"product_id": f"p{rng.randrange(5)}"}
        if rng.random() < 0.9:
            attributes["quantity"] = rng.randrange(1, 5)
        event = event_pb2.Event(
            tenant_id=tenant_id,
            event_id=f"ev{n:05d}",
            event_type=rng.choice(["view", "purchase"]),
            entity_id=f"e{rng.randrange(8)}",
            attributes={k: _value(v) for k, v in attributes.items()},
        )
        event.event_time.CopyFrom(timestamp_from_micros(t))
        event.ingest_time.CopyFrom(timestamp_from_micros(t + 1000))
        data.events.append(event)
    return data


def write_events(raw: Table, events: list[event_pb2.Event]) -> None:
    rows = []
    for event in events:
        stored = event_to_row(event)
        row = DirectRow(stored.key)
        for (family, qualifier), value in stored.cells.items():
            row.set_cell(family, qualifier, value, cell_time(stored.timestamp_micros))
        rows.append(row)
    for start in range(0, len(rows), 500):
        statuses = raw.mutate_rows(rows[start : start + 500])
        assert all(s.code == 0 for s in statuses)


def write_dimension(
    table: Table, tenant_id: str, dimension: str, versions: list[DimVersion]
) -> None:
    rows = []
    for version in versions:
        row = DirectRow(
            row_key_for_dimension(tenant_id, dimension, version.key, version.valid_from)
        )
        ts = cell_time(version.valid_from)
        row.set_cell("m", b"key", version.key.encode(), ts)
        for name, value in version.attributes.items():
            kind, raw = encode_attribute(_value(value))
            row.set_cell(ATTRIBUTE_FAMILIES[kind], name.encode(), raw, ts)
        rows.append(row)
    statuses = table.mutate_rows(rows)
    assert all(s.code == 0 for s in statuses)


# ---------------------------------------------------------------- the independent reference


def _attr(event: event_pb2.Event, name: str) -> Any:
    if name not in event.attributes:
        return None
    value = event.attributes[name]
    return getattr(value, value.WhichOneof("kind"))


def as_of(versions: list[DimVersion], key: str, t: int) -> DimVersion | None:
    best = None
    for version in versions:
        if (
            version.key == key
            and version.valid_from <= t
            and (best is None or version.valid_from > best.valid_from)
        ):
            best = version
    return best


def expected_enriched(data: Dataset) -> dict[bytes, dict[str, Any]]:
    """row key -> {"unmatched": "...", "fields": {"products.price": 21.0, "revenue": ...}}."""
    out: dict[bytes, dict[str, Any]] = {}
    for event in data.events:
        t = micros(event.event_time)
        fields: dict[str, Any] = {}
        unmatched = []
        product = as_of(data.dims["products"], str(_attr(event, "product_id")), t)
        if product is None:
            unmatched.append("products")
        else:
            fields["products.price"] = product.attributes["price"]
            fields["products.category"] = product.attributes["category"]
        user = as_of(data.dims["users"], event.entity_id, t)
        if user is None:
            unmatched.append("users")
        else:
            fields["users.tier"] = user.attributes["tier"]
        quantity = _attr(event, "quantity")
        if quantity is not None and product is not None:
            fields["revenue"] = float(quantity) * product.attributes["price"]
        if product is not None:
            fields["label"] = f"{product.attributes['category']}/{event.event_type}"
        if quantity is not None:
            fields["half"] = (float(quantity) - 1) / 2
        key = row_key_for_event(data.tenant_id, event.entity_id, t, event.event_id)
        out[key] = {"unmatched": ",".join(unmatched), "fields": fields, "entity": event.entity_id}
    return out


def expected_metrics(data: Dataset) -> dict[bytes, dict[str, Any]]:
    """metric row key -> {"c": {type: n}, "v": {"quantity.sum": x, ...}}."""
    enriched = expected_enriched(data)
    buckets: dict[bytes, dict[str, Any]] = {}
    for event in data.events:
        t = micros(event.event_time)
        row = enriched[row_key_for_event(data.tenant_id, event.entity_id, t, event.event_id)]
        values = {
            "quantity": _attr(event, "quantity"),
            "revenue": row["fields"].get("revenue"),
            "products.price": row["fields"].get("products.price"),
        }
        for granularity, size in (("h", HOUR), ("d", DAY)):
            key = row_key_for_metric(data.tenant_id, event.entity_id, granularity, t - t % size)
            bucket = buckets.setdefault(key, {"c": defaultdict(int), "v": {}})
            bucket["c"][event.event_type] += 1
            for name, value in values.items():
                if value is None:
                    continue
                v = bucket["v"]
                v[f"{name}.sum"] = v.get(f"{name}.sum", 0.0) + value
                v[f"{name}.min"] = min(v.get(f"{name}.min", value), value)
                v[f"{name}.max"] = max(v.get(f"{name}.max", value), value)
                v[f"{name}.count"] = v.get(f"{name}.count", 0) + 1
    for bucket in buckets.values():
        bucket["c"] = dict(bucket["c"])
    return buckets


def expected_profiles(data: Dataset) -> dict[bytes, dict[str, Any]]:
    enriched = expected_enriched(data)
    profiles: dict[bytes, dict[str, Any]] = {}
    by_entity: dict[str, list[event_pb2.Event]] = defaultdict(list)
    for event in data.events:
        by_entity[event.entity_id].append(event)
    for entity, events in by_entity.items():
        times = [micros(e.event_time) for e in events]
        newest = max(events, key=lambda e: (micros(e.event_time), e.event_id))
        newest_row = enriched[
            row_key_for_event(data.tenant_id, entity, micros(newest.event_time), newest.event_id)
        ]
        counts: dict[str, int] = defaultdict(int)
        totals: dict[str, float] = defaultdict(float)
        for event in events:
            counts[event.event_type] += 1
            row = enriched[
                row_key_for_event(data.tenant_id, entity, micros(event.event_time), event.event_id)
            ]
            for name, value in (
                ("quantity", _attr(event, "quantity")),
                ("revenue", row["fields"].get("revenue")),
                ("products.price", row["fields"].get("products.price")),
            ):
                if value is not None:
                    totals[name] += value
        profiles[row_key_for_profile(data.tenant_id, entity)] = {
            "first_seen": min(times),
            "last_seen": max(times),
            "event_count": len(events),
            "c": dict(counts),
            "v": dict(totals),
            "x": {k: v for k, v in newest_row["fields"].items() if "." in k},
        }
    return profiles
