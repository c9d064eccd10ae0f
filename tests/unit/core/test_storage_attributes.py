"""The attribute-kind table: one row per AttributeValue kind, each representation consistent."""

from __future__ import annotations

import math

import pytest
from eventpipe.common.v1 import event_pb2
from eventpipe.core.storage import attributes, tables
from eventpipe.core.storage.times import timestamp_from_micros


def test_the_table_has_one_kind_per_field_of_the_attribute_value_oneof() -> None:
    oneof = event_pb2.AttributeValue.DESCRIPTOR.oneofs_by_name["kind"]
    assert [field.name for field in oneof.fields] == [k.field for k in attributes.ATTRIBUTE_KINDS]


def test_families_are_distinct_and_every_table_of_attributes_carries_them() -> None:
    families = [k.family for k in attributes.ATTRIBUTE_KINDS]
    enriched = [k.enriched_family for k in attributes.ATTRIBUTE_KINDS]
    assert len(set(families + enriched)) == 10
    specs = {spec.name: {f.name for f in spec.families} for spec in tables.table_specs()}
    assert set(families) <= specs[tables.RAW_EVENTS_TABLE]
    assert set(families + enriched) <= specs[tables.ENRICHED_EVENTS_TABLE]
    assert set(enriched) <= specs[tables.ENTITY_PROFILES_TABLE]


@pytest.mark.parametrize(
    ("value", "python_value"),
    [
        (event_pb2.AttributeValue(string_value="héllo"), "héllo"),
        (event_pb2.AttributeValue(int_value=-42), -42),
        (event_pb2.AttributeValue(double_value=2.5), 2.5),
        (event_pb2.AttributeValue(bool_value=True), True),
        (event_pb2.AttributeValue(timestamp_value=timestamp_from_micros(1_234_567)), 1_234_567),
    ],
)
def test_each_kind_maps_its_proto_python_and_cell_forms_onto_each_other(
    value: event_pb2.AttributeValue, python_value: object
) -> None:
    kind = attributes.kind_of(value)
    assert kind.value_of(value) == python_value
    assert isinstance(python_value, kind.python_type)
    raw = kind.encode_value(python_value)
    assert kind.decode_value(raw) == python_value
    assert attributes.encode_attribute(value) == (kind.field, raw)
    assert attributes.decode_attribute(kind.field, raw) == value
    assert kind.attribute_of(python_value) == value


def test_the_spark_types_name_each_kinds_python_values() -> None:
    spark = {k.family: k.spark_type for k in attributes.ATTRIBUTE_KINDS}
    assert spark == {"s": "string", "i": "long", "d": "double", "b": "boolean", "t": "long"}


@pytest.mark.parametrize(
    ("kind", "raw"),
    [
        (attributes.INT, b"\x00" * 7),
        (attributes.DOUBLE, b"\x00" * 9),
        (attributes.BOOL, b"\x01\x01"),
        (attributes.STRING, b"\xff"),
        (attributes.TIMESTAMP, attributes.encode_int(2**62)),
    ],
)
def test_a_cell_its_kind_cannot_hold_is_a_value_error(
    kind: attributes.AttributeKind, raw: bytes
) -> None:
    with pytest.raises(ValueError):
        kind.decode_value(raw)


def test_a_value_without_a_kind_cannot_be_encoded() -> None:
    with pytest.raises(ValueError, match="no kind"):
        attributes.encode_attribute(event_pb2.AttributeValue())


def test_a_nan_double_survives_its_cell() -> None:
    assert math.isnan(attributes.DOUBLE.decode_value(attributes.DOUBLE.encode_value(math.nan)))
