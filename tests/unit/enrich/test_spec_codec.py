"""The spec codec: the wire's EnrichmentSpec and the domain's plain Spec convert both ways, and
the bytes the spec store keeps read back unchanged."""

from __future__ import annotations

from enrich.adapters.spec_codec import (
    spec_from_bytes,
    spec_from_proto,
    spec_to_bytes,
    spec_to_proto,
)
from enrich.domain.spec import DerivedField, Join, Spec
from eventpipe.core.storage.times import timestamp_from_micros
from eventpipe.enrich.v1 import enrich_pb2


def wire_spec() -> enrich_pb2.EnrichmentSpec:
    message = enrich_pb2.EnrichmentSpec(
        version=4,
        joins=[
            enrich_pb2.Join(dimension="products", key_field="attributes.sku", fields=["price"]),
            enrich_pb2.Join(dimension="users", key_field="entity_id", fields=["tier", "country"]),
        ],
        derived_fields=[enrich_pb2.DerivedField(name="revenue", expression="qty * products.price")],
        metric_fields=["qty", "revenue"],
    )
    message.create_time.CopyFrom(timestamp_from_micros(1_767_225_600_123_456))
    return message


def test_a_wire_spec_becomes_the_plain_spec_with_every_field() -> None:
    assert spec_from_proto(wire_spec()) == Spec(
        joins=[
            Join("products", "attributes.sku", ["price"]),
            Join("users", "entity_id", ["tier", "country"]),
        ],
        derived_fields=[DerivedField("revenue", "qty * products.price")],
        metric_fields=["qty", "revenue"],
        version=4,
        create_micros=1_767_225_600_123_456,
    )


def test_a_plain_spec_converts_back_to_the_same_wire_spec() -> None:
    assert spec_to_proto(spec_from_proto(wire_spec())) == wire_spec()


def test_an_unset_create_time_stays_unset_both_ways() -> None:
    assert spec_from_proto(enrich_pb2.EnrichmentSpec()).create_micros is None
    assert not spec_to_proto(Spec()).HasField("create_time")
    assert spec_to_proto(Spec()) == enrich_pb2.EnrichmentSpec()


def test_bytes_written_by_the_proto_before_read_back_as_the_same_spec() -> None:
    stored = wire_spec().SerializeToString()  # what rows written before this codec hold
    assert spec_to_proto(spec_from_bytes(stored)) == wire_spec()
    assert enrich_pb2.EnrichmentSpec.FromString(spec_to_bytes(spec_from_bytes(stored))) == (
        wire_spec()
    )
