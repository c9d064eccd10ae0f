"""Tenant isolation in enrich, on real Spark: one tenant's streams never hold back another
tenant's batch job and a stream over the tenant's quota is refused RESOURCE_EXHAUSTED; a driver
JVM that died is replaced so the next tenant's job succeeds; a cancelled job is interrupted
even while Spark plans it."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from typing import Any

import grpc
import pytest
from confluent_kafka import Producer
from enrich.adapters.bigtable_io import BigtableTarget
from enrich.adapters.spark.session import JobCancelled
from enrich.adapters.spark_engine import SparkEngine
from eventpipe.core import bigtable as core_bigtable
from eventpipe.core.kafka import producer_config
from eventpipe.core.storage.keys import row_key_for_event
from eventpipe.core.storage.tables import DIMENSIONS_TABLE, ENRICHED_EVENTS_TABLE, RAW_EVENTS_TABLE
from eventpipe.core.storage.times import micros, timestamp_from_micros
from eventpipe.core.topic_contract import message_headers, message_key
from eventpipe.core.waiting import wait_until
from eventpipe.enrich.v1 import enrich_pb2
from eventpipe.stack.probes import grpc_health
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from tests.integration.enrich import dataset
from tests.integration.enrich.conftest import SPARK_SETTINGS, recent, write_dimensions
from tests.integration.enrich.dataset import BASE, DAY

pytestmark = [pytest.mark.abuse]

EVENTS = 60


def load_tenant(common_settings: Any, stub: Any, tenant_id: str) -> None:
    """Raw events and dimensions of a tenant in Bigtable, and its spec in enrich."""
    data = dataset.generate(tenant_id, events=EVENTS)
    dataset.write_events(core_bigtable.table(common_settings, RAW_EVENTS_TABLE), data.events)
    dims = core_bigtable.table(common_settings, DIMENSIONS_TABLE)
    for name, versions in data.dims.items():
        dataset.write_dimension(dims, tenant_id, name, versions)
    stub.PutEnrichmentSpec(
        enrich_pb2.PutEnrichmentSpecRequest(tenant_id=tenant_id, spec=dataset.test_spec())
    )


def create(stub: Any, tenant_id: str, job: enrich_pb2.EnrichmentJob) -> enrich_pb2.EnrichmentJob:
    request = enrich_pb2.CreateEnrichmentJobRequest(tenant_id=tenant_id, job=job)
    return stub.CreateEnrichmentJob(request).job


def get(stub: Any, tenant_id: str, job_id: str) -> enrich_pb2.EnrichmentJob:
    request = enrich_pb2.GetEnrichmentJobRequest(tenant_id=tenant_id, job_id=job_id)
    return stub.GetEnrichmentJob(request).job


def batch_job() -> enrich_pb2.EnrichmentJob:
    job = enrich_pb2.EnrichmentJob(mode=enrich_pb2.JOB_MODE_BATCH)
    job.time_range.start_time.CopyFrom(timestamp_from_micros(BASE))
    job.time_range.end_time.CopyFrom(timestamp_from_micros(BASE + 2 * DAY))
    return job


def streaming_job() -> enrich_pb2.EnrichmentJob:
    return enrich_pb2.EnrichmentJob(mode=enrich_pb2.JOB_MODE_STREAMING)


def run_to_success(stub: Any, tenant_id: str) -> enrich_pb2.EnrichmentJob:
    created = create(stub, tenant_id, batch_job())
    # Generous: the 2-core machine is shared, and a first job also starts the Spark session.
    wait_until(
        lambda: (
            get(stub, tenant_id, created.job_id).state
            in (enrich_pb2.JOB_STATE_SUCCEEDED, enrich_pb2.JOB_STATE_FAILED)
        ),
        timeout=600,
        what=f"{tenant_id}'s batch job done",
    )
    return get(stub, tenant_id, created.job_id)


def test_two_streams_of_one_tenant_never_hold_back_another_tenants_batch_job_and_a_third_is_refused(
    start_enrich: Any, isolation: Any, common_settings: Any
) -> None:
    _service, stub = start_enrich(EVENTPIPE_ENRICH_TENANT_MAX_STREAMS="2")
    tenant_a, tenant_b = f"{isolation.tenant_id}-a", f"{isolation.tenant_id}-b"
    load_tenant(common_settings, stub, tenant_a)
    load_tenant(common_settings, stub, tenant_b)
    streams = [create(stub, tenant_a, streaming_job()) for _ in range(2)]
    wait_until(
        lambda: all(
            get(stub, tenant_a, s.job_id).state == enrich_pb2.JOB_STATE_RUNNING for s in streams
        ),
        timeout=600,
        what="tenant A's two streams running",
    )

    done = run_to_success(stub, tenant_b)
    assert (done.state, done.error) == (enrich_pb2.JOB_STATE_SUCCEEDED, "")
    assert done.counters.read == EVENTS

    with pytest.raises(grpc.RpcError) as refused:
        create(stub, tenant_a, streaming_job())
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert f"tenant {tenant_a!r} already runs 2 streaming jobs" in str(refused.value.details())
    assert all(get(stub, tenant_a, s.job_id).state == enrich_pb2.JOB_STATE_RUNNING for s in streams)


def driver_jvm(service_pid: int) -> int | None:
    """The pid of the live Java child of the service (its Spark driver), if one runs."""
    for task in Path(f"/proc/{service_pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            try:
                stat = Path(f"/proc/{child}/stat").read_text()
            except OSError:
                continue
            name, state = (
                stat[stat.index("(") + 1 : stat.rindex(")")],
                stat.split(")")[-1].split()[0],
            )
            if name == "java" and state != "Z":  # a killed JVM stays a zombie until reaped
                return int(child)
    return None


def test_a_dead_spark_driver_is_replaced_and_another_tenants_next_batch_job_succeeds(
    start_enrich: Any, isolation: Any, common_settings: Any
) -> None:
    service, stub = start_enrich()
    tenant_a, tenant_b = f"{isolation.tenant_id}-a", f"{isolation.tenant_id}-b"
    load_tenant(common_settings, stub, tenant_a)
    load_tenant(common_settings, stub, tenant_b)
    assert run_to_success(stub, tenant_a).state == enrich_pb2.JOB_STATE_SUCCEEDED
    assert service.pid is not None
    jvm = driver_jvm(service.pid)
    assert jvm is not None

    os.kill(jvm, signal.SIGKILL)  # the driver JVM dies, as after an OutOfMemoryError
    wait_until(lambda: driver_jvm(service.pid) != jvm, timeout=30, what="the old JVM gone")

    done = run_to_success(stub, tenant_b)
    assert (done.state, done.error) == (enrich_pb2.JOB_STATE_SUCCEEDED, "")
    assert done.counters.read == EVENTS
    assert driver_jvm(service.pid) not in (None, jvm)
    assert grpc_health(service.address, "liveness") == "SERVING"
    assert grpc_health(service.address) == "SERVING"


def test_a_stream_survives_the_driver_jvm_dying_under_it_and_enriches_new_events(
    start_enrich: Any, isolation: Any, common_settings: Any
) -> None:
    service, stub = start_enrich()
    tenant = isolation.tenant_id
    data = recent(dataset.generate(tenant, events=4, seed=3))
    write_dimensions(
        {DIMENSIONS_TABLE: core_bigtable.table(common_settings, DIMENSIONS_TABLE)},
        data,
    )
    stub.PutEnrichmentSpec(
        enrich_pb2.PutEnrichmentSpecRequest(tenant_id=tenant, spec=dataset.test_spec())
    )
    stream = create(stub, tenant, streaming_job())
    enriched = core_bigtable.table(common_settings, ENRICHED_EVENTS_TABLE)
    producer = Producer(producer_config(common_settings))

    def produce_and_see(event: Any) -> None:
        key = row_key_for_event(
            event.tenant_id, event.entity_id, micros(event.event_time), event.event_id
        )

        def enriched_now() -> bool:
            # Produced again until seen: the first micro-batch fixes the start offsets.
            producer.produce(
                common_settings.raw_topic,
                key=message_key(event.tenant_id, event.entity_id),
                value=event.SerializeToString(),
                headers=message_headers(event),
            )
            producer.flush(10)
            return enriched.read_row(key) is not None

        wait_until(enriched_now, timeout=600, what=f"{event.event_id} enriched")

    produce_and_see(data.events[0])
    assert service.pid is not None
    jvm = driver_jvm(service.pid)
    assert jvm is not None
    os.kill(jvm, signal.SIGKILL)
    wait_until(lambda: driver_jvm(service.pid) != jvm, timeout=30, what="the old JVM gone")

    produce_and_see(data.events[1])  # the stream restarted on a new session, from its checkpoint
    job = get(stub, tenant, stream.job_id)
    assert (job.state, job.error) == (enrich_pb2.JOB_STATE_RUNNING, "")
    assert driver_jvm(service.pid) not in (None, jvm)
    assert grpc_health(service.address, "liveness") == "SERVING"


def test_cancelling_a_job_interrupts_it_while_spark_plans_it(
    spark_session: SparkSession, target: BigtableTarget, tmp_path: Any
) -> None:
    engine = SparkEngine(
        SPARK_SETTINGS, target, run_dir=tmp_path, session=spark_session, cancel_grace_seconds=1.0
    )
    planning = threading.Event()
    cancelled = threading.Event()
    outcome: list[BaseException | None] = []

    def plan_forever() -> Any:
        column = F.col("id")
        for _ in range(21):  # each level doubles the tree Catalyst walks: minutes of planning
            column = column + column
        planning.set()
        return spark_session.range(1).select(column.alias("x")).collect()

    def job() -> None:
        try:
            engine.run_in_driver("plan-cancel", cancelled, plan_forever)
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=job, daemon=True)
    thread.start()
    wait_until(planning.is_set, timeout=60, what="the driver call planning")
    cancelled.set()
    wait_until(lambda: bool(outcome), timeout=120, what="the cancelled call to end")
    assert isinstance(outcome[0], JobCancelled)
    # The interrupted driver thread left the shared session working.
    assert spark_session.range(3).count() == 3
