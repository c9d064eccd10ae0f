"""The small interfaces the enrich domain needs: the spec and job stores (Bigtable, in
``enrich.adapters.repository``) and the engine (Spark, in ``enrich.adapters``).

The job store also arbitrates between enrich replicas: ``JobStore.claim_window`` is a
conditional write on the job's row, so of several replicas that find the same scheduled window
due, exactly one runs it (see enrich.domain.scheduler for how the scheduler uses it).
"""

from __future__ import annotations

from typing import Protocol

from enrich.domain.records import JobRecord
from enrich.domain.spec import Spec
from enrich.domain.work import BatchWork, Counters, StreamWork


class RunningStream(Protocol):
    def is_active(self) -> bool: ...

    def error(self) -> str | None: ...

    def stop(self) -> None: ...


class Engine(Protocol):
    """What the job manager needs from Spark (enrich.adapters.spark_engine.SparkEngine)."""

    def run_batch(self, work: BatchWork) -> Counters:
        """Runs to completion; raises Cancelled when ``work.cancelled`` stopped it."""
        ...

    def start_stream(self, work: StreamWork) -> RunningStream: ...

    def cancel(self, job_id: str) -> None: ...


class SpecStore(Protocol):
    def put(self, tenant_id: str, spec: Spec) -> Spec:
        """Stores ``spec`` as the next version (assigned here) and returns it."""
        ...

    def get(self, tenant_id: str, version: int = 0) -> Spec | None: ...


class JobStore(Protocol):
    def save(self, record: JobRecord) -> None: ...

    def get(self, tenant_id: str, job_id: str) -> JobRecord | None: ...

    def list_page(
        self, tenant_id: str, page_size: int, after_job_id: str | None
    ) -> list[JobRecord]: ...

    def all_records(self) -> list[JobRecord]: ...

    def scheduled_records(self) -> list[JobRecord]:
        """The records of every scheduled job that has not ended (PENDING or RUNNING), without
        reading the other jobs: how a replica finds the schedules other replicas created."""
        ...

    def claim_window(
        self,
        tenant_id: str,
        job_id: str,
        due_micros: int,
        owner: str,
        now_micros: int,
        lease_micros: int,
    ) -> bool:
        """Atomically claims the scheduled window due at ``due_micros`` for ``owner``.

        The job keeps one claim: (due time, owner, lease expiry). The claim is written, with
        expiry ``now_micros + lease_micros``, and True returned, when the job exists and
        - it has no claim, or
        - its claim is for an earlier window, or
        - its claim is for this window and either ``owner`` holds it (a renewal; a lease of 0
          releases it) or its lease expired at or before ``now_micros`` (the owner died).
        Otherwise nothing is written and False is returned; in particular a claim for a later
        window refuses every earlier one, so a replica with a stale record cannot run a window
        another replica has finished.

        ``now_micros`` is the caller's clock: leases compare the clocks of different replicas,
        so they must be much longer than the clock skew between them.
        """
        ...
