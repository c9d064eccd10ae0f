"""kill -9 of the enrich replica running a scheduled window (its Spark driver dies with it):
the other replica finds the schedule, takes the window over once the dead replica's claim
lapses, without a restart, and writes what a clean run of the same schedule writes."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from enrich.adapters.repository import ENRICH_JOBS_TABLE, BigtableJobStore
from eventpipe.core import bigtable as core_bigtable
from eventpipe.core.config import CommonSettings
from eventpipe.core.storage.keys import row_key_for_job
from eventpipe.core.storage.rows import latest_cells
from eventpipe.core.storage.tables import META_FAMILY
from eventpipe.core.waiting import wait_until
from eventpipe.enrich.v1 import enrich_pb2, enrich_pb2_grpc
from eventpipe.stack.components import GrpcService
from eventpipe.stack.stack import Stack
from google.protobuf import json_format

from tests.cluster.conftest import CLUSTER_TEST_TIMEOUT, restored
from tests.cluster.pipeline import job_output, load_dataset
from tests.conftest import Isolation

pytestmark = [pytest.mark.cluster, pytest.mark.abuse, pytest.mark.timeout(CLUSTER_TEST_TIMEOUT)]

# One window of 12 hours covers every event of the dataset; the next is an hour away.
SCHEDULE = {"interval": "3600s", "window": "43200s", "lateness": "0s"}


class Jobs:
    """A scheduled job's row as the replicas see it: its next window and who claims it."""

    def __init__(self, settings: CommonSettings) -> None:
        self.table = core_bigtable.table(settings, ENRICH_JOBS_TABLE)
        self.store = BigtableJobStore(self.table)

    def next_run(self, tenant: str, job_id: str) -> int:
        record = self.store.get(tenant, job_id)
        assert record is not None
        return record.next_run_micros

    def claim(self, tenant: str, job_id: str) -> tuple[int, str] | None:
        """(due micros, owner) of the window claim, or None."""
        row = self.table.read_row(row_key_for_job(tenant, job_id))
        value = latest_cells(row).get((META_FAMILY, b"claim")) if row is not None else None
        if not value:
            return None
        due, _expiry, owner = value.decode().split("/", 2)
        return int(due), owner


def _owned_by(replica: GrpcService, owner: str) -> bool:
    # The owner id is "<host>-<pid>-<random>": the pid names the replica.
    return f"-{replica.pid}-" in owner


def _schedule(address: str, tenant: str) -> str:
    with grpc.insecure_channel(address) as channel:
        stub = enrich_pb2_grpc.EnrichServiceStub(channel)
        job = json_format.ParseDict(
            {"mode": "JOB_MODE_SCHEDULED", "schedule": SCHEDULE}, enrich_pb2.EnrichmentJob()
        )
        created = stub.CreateEnrichmentJob(
            enrich_pb2.CreateEnrichmentJobRequest(tenant_id=tenant, job=job), timeout=60
        )
    return str(created.job.job_id)


def _cancel(address: str, tenant: str, job_id: str) -> None:
    with grpc.insecure_channel(address) as channel:
        enrich_pb2_grpc.EnrichServiceStub(channel).CancelEnrichmentJob(
            enrich_pb2.CancelEnrichmentJobRequest(tenant_id=tenant, job_id=job_id), timeout=60
        )


@pytest.fixture
def scheduled_jobs(cluster_stack: Stack) -> Iterator[list[tuple[str, str]]]:
    """(tenant, job id) of each schedule the test creates, cancelled when it ends."""
    created: list[tuple[str, str]] = []
    yield created
    survivor = cluster_stack.replicas["enrich"][1]
    for tenant, job_id in created:
        _cancel(survivor.address, tenant, job_id)


def test_a_replica_killed_mid_window_has_its_window_taken_over_with_the_clean_runs_output(
    cluster_stack: Stack,
    cluster_settings: CommonSettings,
    scheduled_jobs: list[tuple[str, str]],
) -> None:
    victim, survivor = cluster_stack.replicas["enrich"]
    killed, clean = Isolation.new().tenant_id, Isolation.new().tenant_id
    for tenant in (killed, clean):
        load_dataset(cluster_stack, tenant)
    jobs = Jobs(cluster_settings)

    with restored(victim):
        job_id = _schedule(victim.address, killed)
        scheduled_jobs.append((killed, job_id))
        due = jobs.next_run(killed, job_id)
        wait_until(
            lambda: (
                (claim := jobs.claim(killed, job_id)) is not None
                and claim[0] == due
                and _owned_by(victim, claim[1])
            ),
            timeout=120,
            what="the creating replica to claim the first window",
        )
        victim.kill()
        assert jobs.next_run(killed, job_id) == due  # killed mid-window, not after it
        wait_until(
            lambda: jobs.next_run(killed, job_id) > due,
            timeout=600,
            interval=1.0,
            what="the surviving replica to run the dead one's window",
        )
        claim = jobs.claim(killed, job_id)
        assert claim is not None and _owned_by(survivor, claim[1])

    clean_job = _schedule(survivor.address, clean)
    scheduled_jobs.append((clean, clean_job))
    clean_due = jobs.next_run(clean, clean_job)
    wait_until(
        lambda: jobs.next_run(clean, clean_job) > clean_due,
        timeout=600,
        interval=1.0,
        what="the clean run's first window",
    )
    taken_over = job_output(cluster_stack, killed)
    assert any(view.get("profile") for name, view in taken_over.items() if name.endswith("profile"))
    assert taken_over == job_output(cluster_stack, clean)
