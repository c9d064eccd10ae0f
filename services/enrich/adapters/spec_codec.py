"""A spec between the domain's plain ``Spec`` and the wire's ``EnrichmentSpec``: the servicer
converts requests and answers with it, and the spec store keeps the proto's serialization
(so rows written before read the same)."""

from __future__ import annotations

from eventpipe.core.storage.times import micros, timestamp_from_micros
from eventpipe.enrich.v1 import enrich_pb2

from enrich.domain.spec import DerivedField, Join, Spec


def spec_from_proto(message: enrich_pb2.EnrichmentSpec) -> Spec:
    return Spec(
        joins=[Join(j.dimension, j.key_field, list(j.fields)) for j in message.joins],
        derived_fields=[DerivedField(d.name, d.expression) for d in message.derived_fields],
        metric_fields=list(message.metric_fields),
        version=message.version,
        create_micros=micros(message.create_time) if message.HasField("create_time") else None,
    )


def spec_to_proto(spec: Spec) -> enrich_pb2.EnrichmentSpec:
    message = enrich_pb2.EnrichmentSpec(
        version=spec.version,
        joins=[
            enrich_pb2.Join(dimension=j.dimension, key_field=j.key_field, fields=j.fields)
            for j in spec.joins
        ],
        derived_fields=[
            enrich_pb2.DerivedField(name=d.name, expression=d.expression)
            for d in spec.derived_fields
        ],
        metric_fields=spec.metric_fields,
    )
    if spec.create_micros is not None:
        message.create_time.CopyFrom(timestamp_from_micros(spec.create_micros))
    return message


def spec_from_bytes(stored: bytes) -> Spec:
    """A spec as the spec store keeps it (the proto's serialization)."""
    return spec_from_proto(enrich_pb2.EnrichmentSpec.FromString(stored))


def spec_to_bytes(spec: Spec) -> bytes:
    return spec_to_proto(spec).SerializeToString()
