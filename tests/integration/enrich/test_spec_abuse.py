"""Hostile specs on real Spark and the real enrich service: long operator chains compile to a
plan that grows linearly and run, deep nesting and names with a trailing newline are refused
with INVALID_ARGUMENT naming the field, never a crash."""

from __future__ import annotations

import math
from typing import Any

import grpc
import pytest
from enrich.adapters.spark.transforms import enrich_frame
from enrich.adapters.spark_engine import SparkEngine
from enrich.adapters.spec_codec import spec_from_proto
from enrich.domain import expressions
from enrich.domain.spec import validate_spec
from enrich.domain.work import BatchWork
from eventpipe.core.storage.keys import row_key_for_event
from eventpipe.core.storage.rows import enriched_fields_from_cells, latest_cells
from eventpipe.core.storage.tables import ENRICHED_EVENTS_TABLE, RAW_EVENTS_TABLE
from eventpipe.core.storage.times import micros
from eventpipe.enrich.v1 import enrich_pb2
from google.cloud.bigtable.table import Table
from pyspark.sql import DataFrame, SparkSession

from tests.integration.enrich import dataset
from tests.integration.enrich.conftest import field_violations
from tests.integration.enrich.dataset import BASE, DAY

pytestmark = [pytest.mark.abuse]

MAX_OPERATORS = (expressions.MAX_NODES - 1) // 2  # 31: the longest chain the node limit allows


def chain(term: str, operators: int, op: str = "+") -> str:
    return f" {op} ".join([term] * (operators + 1))


def right_nested(term: str, operators: int) -> str:
    """a + (a + (a + ... )): every '+' in its own parentheses."""
    return f"{term} + (" * operators + term + ")" * operators


def spec_deriving(*expressions_: str) -> enrich_pb2.EnrichmentSpec:
    spec = enrich_pb2.EnrichmentSpec(
        joins=[
            enrich_pb2.Join(
                dimension="products",
                key_field="attributes.product_id",
                fields=["price", "category"],
            )
        ],
    )
    for index, source in enumerate(expressions_):
        spec.derived_fields.append(enrich_pb2.DerivedField(name=f"f{index}", expression=source))
    return spec


def events_frame(spark: SparkSession, rows: list[dict[str, Any]]) -> DataFrame:
    """One event per dict of attributes (ints as i, floats as d, strings as s), event_id evN."""
    from enrich.adapters.spark.layout import EVENT_SCHEMA

    events = []
    for n, attributes in enumerate(rows):
        maps: dict[str, dict[str, Any]] = {"s": {}, "i": {}, "d": {}, "b": {}, "t": {}}
        for name, value in attributes.items():
            kind = "s" if isinstance(value, str) else "i" if isinstance(value, int) else "d"
            maps[kind][name] = value
        events.append((b"k%d" % n, "t", "e1", f"ev{n}", "view", BASE, BASE, *maps.values()))
    return spark.createDataFrame(events, EVENT_SCHEMA)


def empty_products(spark: SparkSession) -> DataFrame:
    from enrich.adapters.spark.layout import DIMENSION_SCHEMA
    from enrich.adapters.spark.transforms import prepared_dimension

    return prepared_dimension(spark.createDataFrame([], DIMENSION_SCHEMA), 0, ["price", "category"])


def derived_frame(spark: SparkSession, sources: list[str], rows: list[dict[str, Any]]) -> DataFrame:
    """enrich_frame's derived columns (dv{k}_n, dv{k}_s) for one event per row, in order."""
    spec = validate_spec(spec_from_proto(spec_deriving(*sources)))
    events = events_frame(spark, rows)
    frame = enrich_frame(events, {"products": empty_products(spark)}, spec, {})
    columns = [c for k in range(len(sources)) for c in (f"dv{k}_n", f"dv{k}_s")]
    return frame.orderBy("event_id").select(*columns)


def analyzed_plan_size(frame: DataFrame) -> int:
    return len(frame._jdf.queryExecution().analyzed().toString())


@pytest.mark.parametrize("shape", [chain, right_nested], ids=["chain", "right-nested"])
def test_the_plan_grows_linearly_with_the_number_of_operators(
    spark_session: SparkSession, shape: Any
) -> None:
    def size(operators: int) -> int:
        return analyzed_plan_size(derived_frame(spark_session, [shape("a", operators)], [{"a": 1}]))

    sizes = {2: size(2), 4: size(4)}
    first = (sizes[4] - sizes[2]) / 2
    previous = 4
    # Linear: each operator adds about as much as the first ones did. Small steps first, so
    # a plan that doubles per operator fails here long before it would exhaust memory.
    for operators in (6, 8, 16, MAX_OPERATORS):
        sizes[operators] = size(operators)
        per_operator = (sizes[operators] - sizes[previous]) / (operators - previous)
        assert per_operator <= 1.5 * first + 200, sizes
        previous = operators
    assert sizes[MAX_OPERATORS] <= 10 * sizes[2], sizes


def test_hostile_expressions_compute_what_the_reference_evaluator_computes(
    spark_session: SparkSession,
) -> None:
    sources = [
        chain("a", MAX_OPERATORS),
        right_nested("a", MAX_OPERATORS),
        chain("a", MAX_OPERATORS, "*"),
        chain("a", MAX_OPERATORS, "-"),
        chain("(a + s)", 15),
        "s + a + 1 + b + '/' + event_type + (a * b) + -a",
        "(a + b) + (s + b) + (a / (b - b)) ",
        "1 / (1 / (a + b))",
        "(" * expressions.MAX_DEPTH + "a" + ")" * expressions.MAX_DEPTH,
        "-" * (expressions.MAX_DEPTH - 1) + "a",
        "'x' + (a + b)",
        "event_type + (a * b) + 1",
    ]
    rows = [
        {"a": 3, "b": 2.5, "s": "x"},
        {"a": 1.5},
        {"s": "only text", "b": 0.0},
        # Overflow. (No string here: Spark prints 1.7e308 as "1.7E308", Python's repr as
        # "1.7e+308"; numbers print alike only where they are whole below 2^53.)
        {"a": 1.7e308, "b": 1.7e308},
        {},
    ]
    results = derived_frame(spark_session, sources, rows).collect()
    for attributes, got in zip(rows, results, strict=True):

        def lookup(name: str, attributes: dict[str, Any] = attributes) -> Any:
            if name == "event_type":
                return "view"
            value = attributes.get(name)
            return float(value) if isinstance(value, int) else value

        for k, source in enumerate(sources):
            want = expressions.evaluate(expressions.parse(source), lookup)
            number, text = got[f"dv{k}_n"], got[f"dv{k}_s"]
            if isinstance(want, float):
                assert text is None and number == pytest.approx(want), (source, attributes)
            else:
                assert number is None and text == want, (source, attributes)
            assert number is None or math.isfinite(number)


def test_a_job_whose_spec_has_a_31_operator_chain_finishes_with_the_right_values(
    engine: SparkEngine, tables: dict[str, Table], isolation: Any
) -> None:
    data = dataset.generate(isolation.tenant_id, events=20)
    dataset.write_events(tables[RAW_EVENTS_TABLE], data.events)
    spec = spec_deriving(chain("quantity", MAX_OPERATORS), right_nested("quantity", 15))
    spec.metric_fields.append("f0")
    checked = validate_spec(spec_from_proto(spec), version=1)
    counters = engine.run_batch(
        BatchWork("job-chain", isolation.tenant_id, checked, BASE, BASE + 2 * DAY)
    )
    assert counters.read == len(data.events)
    stored = {
        bytes(row.row_key): latest_cells(row) for row in tables[ENRICHED_EVENTS_TABLE].read_rows()
    }
    assert len(stored) == len(data.events)
    for event in data.events:
        key = row_key_for_event(
            isolation.tenant_id, event.entity_id, micros(event.event_time), event.event_id
        )
        fields = enriched_fields_from_cells(stored[key])
        if "quantity" in event.attributes:
            quantity = event.attributes["quantity"].int_value
            assert fields["f0"].double_value == 32 * quantity
            assert fields["f1"].double_value == 16 * quantity
        else:
            assert "f0" not in fields and "f1" not in fields


# ---------------------------------------------------------------- through the service


def put_spec(stub: Any, tenant_id: str, spec: enrich_pb2.EnrichmentSpec) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as raised:
        stub.PutEnrichmentSpec(enrich_pb2.PutEnrichmentSpecRequest(tenant_id=tenant_id, spec=spec))
    return raised.value


def test_deep_nesting_and_trailing_newline_names_are_refused_by_the_service_naming_the_field(
    enrich_stub: Any,
    isolation: Any,
) -> None:
    _service, stub = enrich_stub
    deep = put_spec(stub, isolation.tenant_id, spec_deriving("(" * 511 + "a" + ")" * 511))
    assert deep.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert len(deep.details() or "") < 2000  # a reason, not a traceback
    violations = field_violations(deep)
    assert set(violations) == {"spec.derived_fields[0].expression"}
    assert "nesting deeper than 32 levels" in violations["spec.derived_fields[0].expression"]

    newline = spec_deriving("quantity * 2")
    newline.joins.append(
        enrich_pb2.Join(dimension="users\n", key_field="entity_id", fields=["tier"])
    )
    newline.joins[0].fields.append("weight\n")
    newline.derived_fields.append(enrich_pb2.DerivedField(name="total\n", expression="1"))
    newline.metric_fields.append("quantity\n")
    refused = put_spec(stub, isolation.tenant_id, newline)
    assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(field_violations(refused)) == {
        "spec.joins[0].fields[2]",
        "spec.joins[1].dimension",
        "spec.derived_fields[1].name",
        "spec.metric_fields[0]",
    }

    # The service is still healthy and takes the longest chain the limits allow.
    stored = stub.PutEnrichmentSpec(
        enrich_pb2.PutEnrichmentSpecRequest(
            tenant_id=isolation.tenant_id, spec=spec_deriving(chain("a", MAX_OPERATORS))
        )
    ).spec
    assert stored.version == 1
