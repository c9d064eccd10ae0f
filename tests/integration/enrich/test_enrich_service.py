"""The enrich service as a process: specs and jobs over gRPC, records surviving a restart."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from eventpipe.core.storage.tables import DIMENSIONS_TABLE, RAW_EVENTS_TABLE
from eventpipe.core.storage.times import timestamp_from_micros
from eventpipe.core.waiting import wait_until
from eventpipe.enrich.v1 import enrich_pb2

from tests.integration.enrich import dataset
from tests.integration.enrich.conftest import field_violations
from tests.integration.enrich.dataset import BASE, DAY

INJECTIONS = [
    "reflect('java.lang.Runtime','exec','x')",
    "java_method('java.lang.System', 'exit', 1)",
    "1; DROP TABLE events",
    "`quantity`",
    "abs(quantity)",
    'quantity * "price"',
    "quantity || 'x'",
    "quantity) OR (1 = 1",
]


def test_a_bad_spec_is_refused_with_a_violation_per_field(enrich_stub: Any, isolation: Any) -> None:
    _service, stub = enrich_stub
    spec = enrich_pb2.EnrichmentSpec(
        joins=[enrich_pb2.Join(dimension="Bad-Name", key_field="quantity", fields=[])],
        derived_fields=[
            enrich_pb2.DerivedField(name="x", expression="nope.price * 2"),
        ],
        metric_fields=["missing.field"],
    )
    with pytest.raises(grpc.RpcError) as raised:
        stub.PutEnrichmentSpec(
            enrich_pb2.PutEnrichmentSpecRequest(tenant_id=isolation.tenant_id, spec=spec)
        )
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    violations = field_violations(raised.value)
    assert set(violations) == {
        "spec.joins[0].dimension",
        "spec.joins[0].key_field",
        "spec.joins[0].fields",
        "spec.derived_fields[0].expression",
        "spec.metric_fields[0]",
    }


@pytest.mark.parametrize("expression", INJECTIONS)
def test_an_injection_attempt_in_an_expression_is_refused(
    enrich_stub: Any, isolation: Any, expression: str
) -> None:
    _service, stub = enrich_stub
    spec = dataset.test_spec()
    spec.derived_fields.append(enrich_pb2.DerivedField(name="evil", expression=expression))
    with pytest.raises(grpc.RpcError) as raised:
        stub.PutEnrichmentSpec(
            enrich_pb2.PutEnrichmentSpecRequest(tenant_id=isolation.tenant_id, spec=spec)
        )
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "spec.derived_fields[3].expression" in field_violations(raised.value)


def test_a_batch_job_runs_to_success_and_its_record_survives_a_restart(
    enrich_stub: Any, isolation: Any, common_settings: Any
) -> None:
    from eventpipe.core import bigtable as core_bigtable

    service, stub = enrich_stub
    data = dataset.generate(isolation.tenant_id, events=60)
    dataset.write_events(core_bigtable.table(common_settings, RAW_EVENTS_TABLE), data.events)
    dims = core_bigtable.table(common_settings, DIMENSIONS_TABLE)
    for name, versions in data.dims.items():
        dataset.write_dimension(dims, isolation.tenant_id, name, versions)
    stored = stub.PutEnrichmentSpec(
        enrich_pb2.PutEnrichmentSpecRequest(tenant_id=isolation.tenant_id, spec=dataset.test_spec())
    ).spec
    assert stored.version == 1
    assert (
        stub.GetEnrichmentSpec(
            enrich_pb2.GetEnrichmentSpecRequest(tenant_id=isolation.tenant_id)
        ).spec
        == stored
    )

    job = enrich_pb2.EnrichmentJob(mode=enrich_pb2.JOB_MODE_BATCH)
    job.time_range.start_time.CopyFrom(timestamp_from_micros(BASE))
    job.time_range.end_time.CopyFrom(timestamp_from_micros(BASE + 2 * DAY))
    created = stub.CreateEnrichmentJob(
        enrich_pb2.CreateEnrichmentJobRequest(tenant_id=isolation.tenant_id, job=job)
    ).job
    assert created.state == enrich_pb2.JOB_STATE_PENDING

    def get() -> enrich_pb2.EnrichmentJob:
        return stub.GetEnrichmentJob(
            enrich_pb2.GetEnrichmentJobRequest(tenant_id=isolation.tenant_id, job_id=created.job_id)
        ).job

    # Generous: the 2-core machine is shared, and the first job also starts the Spark session.
    wait_until(lambda: get().state == enrich_pb2.JOB_STATE_SUCCEEDED, timeout=600, what="job done")
    done = get()
    expected = dataset.expected_enriched(data)
    unmatched = sum(1 for row in expected.values() if row["unmatched"])
    assert (done.counters.read, done.counters.unmatched, done.progress) == (60, unmatched, 1.0)

    service.restart(timeout=120)
    assert get() == done
    listed = stub.ListEnrichmentJobs(
        enrich_pb2.ListEnrichmentJobsRequest(tenant_id=isolation.tenant_id)
    )
    assert [j.job_id for j in listed.jobs] == [created.job_id]


def test_a_cancelled_job_ends_cancelled_and_stays_so(enrich_stub: Any, isolation: Any) -> None:
    _service, stub = enrich_stub
    stub.PutEnrichmentSpec(
        enrich_pb2.PutEnrichmentSpecRequest(tenant_id=isolation.tenant_id, spec=dataset.test_spec())
    )
    job = enrich_pb2.EnrichmentJob(mode=enrich_pb2.JOB_MODE_SCHEDULED)
    job.schedule.interval.FromSeconds(60)
    job.schedule.window.FromSeconds(3600)
    created = stub.CreateEnrichmentJob(
        enrich_pb2.CreateEnrichmentJobRequest(tenant_id=isolation.tenant_id, job=job)
    ).job
    cancelled = stub.CancelEnrichmentJob(
        enrich_pb2.CancelEnrichmentJobRequest(tenant_id=isolation.tenant_id, job_id=created.job_id)
    ).job
    assert cancelled.state == enrich_pb2.JOB_STATE_CANCELLED
    assert cancelled.HasField("end_time")
