"""The attribute kinds, one table: the ``AttributeValue`` oneof field, the column family (and
its enriched twin), the Spark type, the Python type, and the cell codec of each.

Every reader and writer that branches on a value's kind looks it up here (``KIND_BY_FIELD``,
``KIND_BY_FAMILY``, ...) instead of writing its own if-chain. Cell encodings: strings UTF-8;
int64 and timestamps (microseconds since the epoch) 8-byte big-endian signed; doubles 8-byte
big-endian IEEE 754; bool one byte ``0x00``/``0x01``.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from eventpipe.common.v1 import event_pb2
from eventpipe.core.storage.times import micros, timestamp_from_micros
from eventpipe.core.validation import MAX_TIMESTAMP_SECONDS, MIN_TIMESTAMP_SECONDS

_INT64 = struct.Struct(">q")
_DOUBLE = struct.Struct(">d")
_MIN_TIMESTAMP_MICROS = MIN_TIMESTAMP_SECONDS * 1_000_000
_MAX_TIMESTAMP_MICROS = (MAX_TIMESTAMP_SECONDS + 1) * 1_000_000 - 1

# ---------------------------------------------------------------- cell codecs


def encode_int(value: int) -> bytes:
    return _INT64.pack(value)


def decode_int(raw: bytes) -> int:
    """Raises ValueError (not struct.error) for a cell that is not 8 bytes."""
    if len(raw) != 8:
        raise ValueError(f"an int64 cell holds 8 bytes, not {len(raw)}")
    return int(_INT64.unpack(raw)[0])


def encode_double(value: float) -> bytes:
    return _DOUBLE.pack(value)


def decode_double(raw: bytes) -> float:
    if len(raw) != 8:
        raise ValueError(f"a double cell holds 8 bytes, not {len(raw)}")
    return float(_DOUBLE.unpack(raw)[0])


def encode_bool(value: object) -> bytes:
    return b"\x01" if value else b"\x00"


def decode_bool(raw: bytes) -> bool:
    if len(raw) != 1:
        raise ValueError(f"a bool cell holds 1 byte, not {len(raw)}")
    return raw != b"\x00"


def encode_text(value: object) -> bytes:
    return str(value).encode()


def decode_text(raw: bytes) -> str:
    """UTF-8; UnicodeDecodeError (a ValueError) for bytes that are not."""
    return raw.decode()


def encode_timestamp_micros(value: object) -> bytes:
    return encode_int(int(value))  # type: ignore[call-overload]


def decode_timestamp_micros(raw: bytes) -> int:
    """An int64-micros cell; ValueError outside 0001-01-01..9999-12-31."""
    value = decode_int(raw)
    if not _MIN_TIMESTAMP_MICROS <= value <= _MAX_TIMESTAMP_MICROS:
        raise ValueError("timestamp outside 0001-01-01..9999-12-31")
    return value


def decode_timestamp(raw: bytes) -> Timestamp:
    """An int64-micros cell as a Timestamp; ValueError outside 0001-01-01..9999-12-31."""
    return timestamp_from_micros(decode_timestamp_micros(raw))


# ---------------------------------------------------------------- the kind table


@dataclass(frozen=True)
class AttributeKind:
    """One value kind of ``AttributeValue``, in every representation the pipeline uses."""

    field: str
    """The ``AttributeValue.kind`` oneof field, e.g. "int_value"."""
    family: str
    """The column family of event and dimension attributes; also the name of the Spark map
    column that holds them ("s", "i", "d", "b", "t")."""
    spark_type: str
    """The Spark SQL type of a value (``pyspark.sql.types`` DDL name)."""
    python_type: type
    """What a value is in Python (Spark rows): a timestamp is int microseconds."""
    encode_value: Callable[[Any], bytes]
    """A Python value to its cell."""
    decode_value: Callable[[bytes], Any]
    """A cell to its Python value; ValueError for a cell the kind cannot hold."""
    value_of: Callable[[event_pb2.AttributeValue], Any]
    """The Python value held by an ``AttributeValue`` of this kind."""
    attribute_of: Callable[[Any], event_pb2.AttributeValue]
    """An ``AttributeValue`` of this kind holding a Python value."""

    @property
    def enriched_family(self) -> str:
        """The family of fields enrichment adds (joined "dimension.field" and derived)."""
        return ENRICHED_FAMILY_PREFIX + self.family


ENRICHED_FAMILY_PREFIX = "x"

STRING = AttributeKind(
    "string_value",
    "s",
    "string",
    str,
    encode_text,
    decode_text,
    lambda value: value.string_value,
    lambda value: event_pb2.AttributeValue(string_value=value),
)
INT = AttributeKind(
    "int_value",
    "i",
    "long",
    int,
    lambda value: encode_int(int(value)),
    decode_int,
    lambda value: value.int_value,
    lambda value: event_pb2.AttributeValue(int_value=value),
)
DOUBLE = AttributeKind(
    "double_value",
    "d",
    "double",
    float,
    lambda value: encode_double(float(value)),
    decode_double,
    lambda value: value.double_value,
    lambda value: event_pb2.AttributeValue(double_value=value),
)
BOOL = AttributeKind(
    "bool_value",
    "b",
    "boolean",
    bool,
    encode_bool,
    decode_bool,
    lambda value: value.bool_value,
    lambda value: event_pb2.AttributeValue(bool_value=value),
)
TIMESTAMP = AttributeKind(
    "timestamp_value",
    "t",
    "long",
    int,
    encode_timestamp_micros,
    decode_timestamp_micros,
    lambda value: micros(value.timestamp_value),
    lambda value: event_pb2.AttributeValue(timestamp_value=timestamp_from_micros(value)),
)

ATTRIBUTE_KINDS: tuple[AttributeKind, ...] = (STRING, INT, DOUBLE, BOOL, TIMESTAMP)
"""Every kind, in the order of the Spark map columns ("s", "i", "d", "b", "t")."""
KIND_BY_FIELD = {kind.field: kind for kind in ATTRIBUTE_KINDS}
KIND_BY_FAMILY = {kind.family: kind for kind in ATTRIBUTE_KINDS}
KIND_BY_ENRICHED_FAMILY = {kind.enriched_family: kind for kind in ATTRIBUTE_KINDS}

ATTRIBUTE_FAMILIES = {kind.field: kind.family for kind in ATTRIBUTE_KINDS}
"""oneof field -> family of event and dimension attributes; the qualifier is the name."""
ENRICHED_FAMILIES = {kind.field: kind.enriched_family for kind in ATTRIBUTE_KINDS}
"""oneof field -> family of the fields enrichment adds."""


def kind_of(value: event_pb2.AttributeValue) -> AttributeKind:
    """The kind of a set ``AttributeValue``; ValueError when it has none."""
    field = value.WhichOneof("kind")
    if field is None:
        raise ValueError("attribute value has no kind")
    return KIND_BY_FIELD[field]


def encode_attribute(value: event_pb2.AttributeValue) -> tuple[str, bytes]:
    """Returns (oneof field, cell bytes); the field selects the family."""
    kind = kind_of(value)
    return kind.field, kind.encode_value(kind.value_of(value))


def decode_attribute(field: str, raw: bytes) -> event_pb2.AttributeValue:
    """Raises ValueError (UnicodeDecodeError included) for a cell its kind cannot hold."""
    kind = KIND_BY_FIELD.get(field)
    if kind is None:
        raise ValueError(f"unknown attribute kind {field!r}")
    return kind.attribute_of(kind.decode_value(raw))
