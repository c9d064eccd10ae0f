"""Job lifecycle: validation, running batch / scheduled / streaming jobs, cancel, recovery.

Jobs run on one shared Spark engine (see docs/enrich.md). Every state change is saved to the
job store first, so a restart of the service finds each job where it was: PENDING or RUNNING
batch jobs run again from the start (their output is idempotent), scheduled jobs resume at
their persisted next window, streaming jobs restart from their checkpoint.

Scheduled windows. ``tick`` starts a window when it is due (``next_run``, persisted, advanced
only when the window succeeded, so a failed window is retried until it succeeds, never skipped)
and this replica wins its claim:

- Claim: several replicas (or the old and new pod of a rolling update) may tick the same job.
  Before running a window a replica claims it with ``JobStore.claim_window``, a conditional
  write on the job's row holding (due time, owner, lease expiry). Only the winner runs the
  window; it renews the lease at every tick past half of it while the window runs, so a lease
  expires only when its owner stopped (crashed, hung): then another replica takes the window
  over. After winning, the replica reads the record again and runs only if ``next_run`` still
  is the claimed due time, so a record read just before another replica finished cannot run a
  window twice. A replica that shuts down mid-window releases its claim.
- Backoff: after a failed window the replica waits before retrying it, ``retry_initial`` at
  first, doubling per failure, capped at ``retry_max`` and at the schedule's interval; a success
  resets it. The failing replica keeps its claim until the retry is due, so the other replicas
  wait too and the backoff holds for the whole deployment. The job's ``error`` shows the last
  failure; the attempt count is logged (the job message has no field for it).
  The failure count and retry time live in memory only: a restarted replica retries at once,
  or once the claim of its previous incarnation expires, and its backoff starts again from
  ``retry_initial``. That costs at most one early retry; no window is skipped or run twice.
- Index: the ticker keeps a heap of (due time, job) of the schedules it runs, updated when a
  job is created, recovered, claimed, finished or cancelled, so a tick reads only the records
  of the windows that are due, never the whole job table.

Fair shares (``Quotas``). Batch jobs and scheduled windows wait for one of
``max_running_jobs`` slots in a queue served round-robin across tenants, a tenant holding at
most ``tenant_max_running_jobs`` of them; streams run on threads of their own, outside those
slots, so streams never hold batch work back. A create beyond a tenant's (or the process')
limit of pending batch jobs, schedules or streams is refused with RESOURCE_EXHAUSTED.

Cancel. Each job has a ``CancellationToken``: cancel sets it and asks the engine to interrupt
the job (Spark: cancel its job group and stop its driver call, planning included); the job's
thread checks the token between steps, ends CANCELLED and frees its slot.
"""

from __future__ import annotations

import heapq
import logging
import os
import re
import secrets
import socket
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from eventpipe.core import schema
from eventpipe.core.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Violation,
)
from eventpipe.core.page_tokens import PageTokenCodec
from eventpipe.enrich.v1 import enrich_pb2

from enrich.domain.records import JobRecord, JobStore, SpecStore, new_job_id
from enrich.domain.spec import CheckedSpec, validate_spec

log = logging.getLogger(__name__)

MIN_SCHEDULE_INTERVAL_MICROS = 60_000_000
MIN_TRIGGER_MICROS = 100_000
DEFAULT_TRIGGER_MICROS = 1_000_000
DEFAULT_RETRY_INITIAL_MICROS = 5_000_000
DEFAULT_RETRY_MAX_MICROS = 600_000_000
DEFAULT_CLAIM_LEASE_MICROS = 120_000_000
LIST_ENRICHMENT_JOBS = "eventpipe.enrich.v1.EnrichService/ListEnrichmentJobs"
TERMINAL = {
    enrich_pb2.JOB_STATE_SUCCEEDED,
    enrich_pb2.JOB_STATE_FAILED,
    enrich_pb2.JOB_STATE_CANCELLED,
}


def _duration_micros(duration: Any) -> int:
    return int(duration.seconds) * 1_000_000 + int(duration.nanos) // 1000


class Cancelled(Exception):
    """Raised by an engine when a job's cancel flag stopped it."""


class CancellationToken:
    """Set once when a job is cancelled (or the process stops); the job's thread checks it
    between steps, and callbacks registered with ``on_cancel`` run when it is set."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._callbacks: list[Callable[[], None]] = []

    def cancel(self) -> None:
        with self._lock:
            if self._event.is_set():
                return
            self._event.set()
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            try:
                callback()
            except Exception:
                log.warning("a cancel callback failed", exc_info=True)

    def is_set(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._event.wait(timeout)

    def raise_if_cancelled(self, job_id: str) -> None:
        if self._event.is_set():
            raise Cancelled(job_id)

    def on_cancel(self, callback: Callable[[], None]) -> None:
        """Runs ``callback`` when the token is set (at once if it already is)."""
        with self._lock:
            if not self._event.is_set():
                self._callbacks.append(callback)
                return
        callback()


@dataclass(frozen=True)
class Quotas:
    """Fair shares of one enrich process (see docs/enrich.md for the variables)."""

    max_running_jobs: int = 2  # batch jobs and scheduled windows running at once
    tenant_max_running_jobs: int = 1  # of those slots, held by one tenant at once
    tenant_max_batch_jobs: int = 4  # a tenant's batch jobs pending or running
    tenant_max_scheduled_jobs: int = 50  # a tenant's active schedules
    max_streams: int = 8  # streaming jobs running at once, each on a thread of its own
    tenant_max_streams: int = 2  # a tenant's streaming jobs

    def __post_init__(self) -> None:
        if min(self.max_running_jobs, self.tenant_max_running_jobs, self.max_streams) < 1:
            raise ValueError("job and stream slots must be at least 1")


class FairSlots:
    """``slots`` worker threads running queued work, round-robin across tenants, a tenant
    holding at most ``per_tenant`` of them, so one tenant's queue never starves another's."""

    def __init__(self, slots: int, per_tenant: int, name: str = "enrich-job") -> None:
        self.per_tenant = per_tenant
        self._cond = threading.Condition()
        self._queues: dict[str, deque[Callable[[], None]]] = {}
        self._turns: deque[str] = deque()  # tenants with queued work, next turn first
        self._running: Counter[str] = Counter()
        self._closed = False
        self._threads = [
            threading.Thread(target=self._serve, name=f"{name}-{n}", daemon=True)
            for n in range(slots)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, tenant_id: str, work: Callable[[], None]) -> None:
        with self._cond:
            if self._closed:
                return
            queue = self._queues.setdefault(tenant_id, deque())
            if not queue:
                self._turns.append(tenant_id)
            queue.append(work)
            self._cond.notify()

    def running(self, tenant_id: str) -> int:
        with self._cond:
            return self._running[tenant_id]

    def _take(self) -> tuple[str, Callable[[], None]] | None:
        for _ in range(len(self._turns)):
            tenant_id = self._turns.popleft()
            queue = self._queues[tenant_id]
            if self._running[tenant_id] >= self.per_tenant:
                self._turns.append(tenant_id)
                continue
            work = queue.popleft()
            if queue:
                self._turns.append(tenant_id)  # its next item waits for the others' turns
            else:
                del self._queues[tenant_id]
            return tenant_id, work
        return None

    def _serve(self) -> None:
        while True:
            with self._cond:
                taken = self._take()
                while taken is None:
                    if self._closed:
                        return
                    self._cond.wait()
                    taken = self._take()
                tenant_id, work = taken
                self._running[tenant_id] += 1
            try:
                work()
            except Exception:
                log.exception("job work escaped its handler")
            finally:
                with self._cond:
                    self._running[tenant_id] -= 1
                    self._cond.notify_all()

    def close(self, timeout: float) -> None:
        """Drops queued work and waits up to ``timeout`` for running work to end."""
        with self._cond:
            self._closed = True
            self._queues.clear()
            self._turns.clear()
            self._cond.notify_all()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))


@dataclass
class BatchWork:
    job_id: str
    tenant_id: str
    spec: CheckedSpec
    start_micros: int
    end_micros: int
    cancelled: CancellationToken
    on_progress: Callable[[float, enrich_pb2.JobCounters], None]


@dataclass
class StreamWork:
    job_id: str
    tenant_id: str
    spec: CheckedSpec
    trigger_seconds: float
    on_batch: Callable[[enrich_pb2.JobCounters], None]


class RunningStream(Protocol):
    def is_active(self) -> bool: ...

    def error(self) -> str | None: ...

    def stop(self) -> None: ...


class Engine(Protocol):
    """What the job manager needs from Spark (enrich.adapters.engine_adapter binds it)."""

    def run_batch(self, work: BatchWork) -> enrich_pb2.JobCounters:
        """Runs to completion; raises Cancelled when ``work.cancelled`` stopped it."""
        ...

    def start_stream(self, work: StreamWork) -> RunningStream: ...

    def cancel(self, job_id: str) -> None: ...


def validate_job(job: enrich_pb2.EnrichmentJob, now_micros: int, retention_micros: int) -> None:
    violations: list[Violation] = []
    if job.mode == enrich_pb2.JOB_MODE_BATCH:
        end = (
            schema.micros(job.time_range.end_time)
            if job.time_range.HasField("end_time")
            else now_micros
        )
        start = (
            schema.micros(job.time_range.start_time)
            if job.time_range.HasField("start_time")
            else now_micros - retention_micros
        )
        if start >= end:
            violations.append(Violation("job.time_range", "start_time must be before end_time"))
    elif job.mode == enrich_pb2.JOB_MODE_SCHEDULED:
        if not job.HasField("schedule"):
            violations.append(Violation("job.schedule", "required for JOB_MODE_SCHEDULED"))
        else:
            if _duration_micros(job.schedule.interval) < MIN_SCHEDULE_INTERVAL_MICROS:
                violations.append(Violation("job.schedule.interval", "at least 1 minute"))
            if _duration_micros(job.schedule.window) <= 0:
                violations.append(Violation("job.schedule.window", "must be positive"))
            if _duration_micros(job.schedule.lateness) < 0:
                violations.append(Violation("job.schedule.lateness", "must not be negative"))
    elif job.mode == enrich_pb2.JOB_MODE_STREAMING:
        if job.HasField("trigger_interval") and (
            _duration_micros(job.trigger_interval) < MIN_TRIGGER_MICROS
        ):
            violations.append(Violation("job.trigger_interval", "at least 100ms"))
    else:
        violations.append(Violation("job.mode", "choose BATCH, SCHEDULED or STREAMING"))
    if job.spec_version < 0:
        violations.append(Violation("job.spec_version", "must not be negative"))
    if violations:
        raise InvalidArgument(
            f"invalid job: {violations[0].field}: {violations[0].description}",
            violations=violations,
        )


def batch_window(
    job: enrich_pb2.EnrichmentJob, now_micros: int, retention_micros: int
) -> tuple[int, int]:
    end = (
        schema.micros(job.time_range.end_time)
        if job.time_range.HasField("end_time")
        else now_micros
    )
    start = (
        schema.micros(job.time_range.start_time)
        if job.time_range.HasField("start_time")
        else now_micros - retention_micros
    )
    return start, end


def scheduled_window(schedule: enrich_pb2.Schedule, run_at_micros: int) -> tuple[int, int]:
    """The window a run due at ``run_at`` enriches: it ends ``lateness`` before the run."""
    end = run_at_micros - _duration_micros(schedule.lateness)
    return end - _duration_micros(schedule.window), end


def next_run_after(schedule: enrich_pb2.Schedule, due_micros: int, now_micros: int) -> int:
    """The next due time after a run: one interval on, skipping intervals missed while down
    (the window of the next run covers them if window >= interval)."""
    interval = _duration_micros(schedule.interval)
    following = due_micros + interval
    if following <= now_micros:
        following += (now_micros - following) // interval * interval + interval
    return following


def retry_delay_micros(
    schedule: enrich_pb2.Schedule, failures: int, initial_micros: int, max_micros: int
) -> int:
    """How long to wait after the ``failures``-th failure in a row of a window: ``initial``
    doubled per earlier failure, capped at ``max`` and at the schedule's interval."""
    cap = min(max_micros, _duration_micros(schedule.interval))
    doublings = min(max(failures - 1, 0), 62)  # beyond that the cap holds anyway
    return max(min(initial_micros << doublings, cap), 0)


def default_owner_id() -> str:
    """Names this process in window claims: the host (the pod in Kubernetes), the pid and a
    random part, since a restarted container may get the same pid."""
    host = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname())[:64] or "host"
    return f"{host}-{os.getpid()}-{secrets.token_hex(4)}"


@dataclass
class _Active:
    tenant_id: str
    mode: int
    cancelled: CancellationToken = field(default_factory=CancellationToken)
    stream: RunningStream | None = None
    window_running: bool = False
    # Scheduled jobs only. Guarded by JobManager._lock:
    failures: int = 0  # of the current window, in a row, in this process
    retry_at_micros: int = 0
    indexed_at_micros: int | None = None  # the live entry of this job in the due index
    # Guarded by claim_lock, so no renewal extends a claim after its window ended:
    claim: tuple[str, int] | None = None  # (tenant, due) of the window running here
    renew_claim_at_micros: int = 0
    claim_lock: threading.Lock = field(default_factory=threading.Lock)


class JobManager:
    def __init__(
        self,
        specs: SpecStore,
        jobs: JobStore,
        engine: Engine,
        *,
        quotas: Quotas | None = None,
        retention_micros: int = 30 * 86_400_000_000,
        clock: Callable[[], int] = lambda: time.time_ns() // 1000,
        tick_seconds: float = 1.0,
        owner_id: str | None = None,
        retry_initial_micros: int = DEFAULT_RETRY_INITIAL_MICROS,
        retry_max_micros: int = DEFAULT_RETRY_MAX_MICROS,
        claim_lease_micros: int = DEFAULT_CLAIM_LEASE_MICROS,
        page_token_secret: bytes | None = None,
    ) -> None:
        self.specs = specs
        self.jobs = jobs
        self.engine = engine
        self.quotas = quotas or Quotas()
        self.clock = clock
        self.retention_micros = retention_micros
        self.tick_seconds = tick_seconds
        self.owner_id = owner_id or default_owner_id()
        self.retry_initial_micros = retry_initial_micros
        self.retry_max_micros = retry_max_micros
        self.claim_lease_micros = claim_lease_micros
        # Unset: a random key per process (tokens then work only on the replica that issued them).
        self._page_tokens = PageTokenCodec(
            page_token_secret or secrets.token_bytes(32), LIST_ENRICHMENT_JOBS
        )
        self._slots = FairSlots(self.quotas.max_running_jobs, self.quotas.tenant_max_running_jobs)
        self._stream_threads: dict[str, threading.Thread] = {}
        self._active: dict[str, _Active] = {}
        self._due: list[tuple[int, str]] = []  # heap of (due micros, job id); see _index
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._ticker: threading.Thread | None = None

    # -- specs

    def put_spec(
        self, tenant_id: str, spec: enrich_pb2.EnrichmentSpec
    ) -> enrich_pb2.EnrichmentSpec:
        validate_spec(spec)
        stored = enrich_pb2.EnrichmentSpec()
        stored.CopyFrom(spec)
        stored.create_time.CopyFrom(schema.timestamp_from_micros(self.clock()))
        return self.specs.put(tenant_id, stored)

    def get_spec(self, tenant_id: str, version: int = 0) -> enrich_pb2.EnrichmentSpec:
        spec = self.specs.get(tenant_id, version)
        if spec is None:
            what = f"version {version}" if version else "any version"
            raise NotFound(f"tenant {tenant_id!r} has no enrichment spec ({what})")
        return spec

    def _checked_spec(self, tenant_id: str, version: int) -> CheckedSpec:
        spec = self.get_spec(tenant_id, version)
        return validate_spec(spec, version=spec.version)

    # -- jobs

    def create_job(self, tenant_id: str, job: enrich_pb2.EnrichmentJob) -> enrich_pb2.EnrichmentJob:
        now = self.clock()
        validate_job(job, now, self.retention_micros)
        spec = self.specs.get(tenant_id, job.spec_version)
        if spec is None:
            if job.spec_version:
                raise InvalidArgument(
                    f"spec version {job.spec_version} does not exist",
                    violations=[Violation("job.spec_version", "no such spec version")],
                )
            raise FailedPrecondition(f"tenant {tenant_id!r} has no enrichment spec: put one first")
        record = enrich_pb2.EnrichmentJob(
            job_id=new_job_id(now),
            mode=job.mode,
            spec_version=spec.version,
            state=enrich_pb2.JOB_STATE_PENDING,
        )
        record.create_time.CopyFrom(schema.timestamp_from_micros(now))
        if job.mode == enrich_pb2.JOB_MODE_BATCH:
            start, end = batch_window(job, now, self.retention_micros)
            record.time_range.start_time.CopyFrom(schema.timestamp_from_micros(start))
            record.time_range.end_time.CopyFrom(schema.timestamp_from_micros(end))
        elif job.mode == enrich_pb2.JOB_MODE_SCHEDULED:
            record.schedule.CopyFrom(job.schedule)
        else:
            record.trigger_interval.CopyFrom(job.trigger_interval)
            if not job.HasField("trigger_interval"):
                record.trigger_interval.FromMicroseconds(DEFAULT_TRIGGER_MICROS)
        stored = JobRecord(tenant_id, record, next_run_micros=now)
        active = self._admit(tenant_id, record.job_id, job.mode)
        try:
            self.jobs.save(stored)
        except Exception:
            with self._lock:
                self._active.pop(record.job_id, None)
            raise
        answer = enrich_pb2.EnrichmentJob()
        answer.CopyFrom(record)  # the worker thread mutates ``record`` from now on
        self._launch(stored, active)
        return answer

    def _admit(self, tenant_id: str, job_id: str, mode: int) -> _Active:
        """Reserves the job's place in the tenant's quota, or refuses it."""
        quotas = self.quotas
        with self._lock:
            mine = sum(
                1 for a in self._active.values() if a.tenant_id == tenant_id and a.mode == mode
            )
            if mode == enrich_pb2.JOB_MODE_STREAMING:
                streams = sum(
                    1 for a in self._active.values() if a.mode == enrich_pb2.JOB_MODE_STREAMING
                )
                if mine >= quotas.tenant_max_streams:
                    raise ResourceExhausted(
                        f"tenant {tenant_id!r} already runs {mine} streaming jobs, its limit: "
                        "cancel one before starting another"
                    )
                if streams >= quotas.max_streams:
                    raise ResourceExhausted(
                        f"the enrich service already runs {streams} streaming jobs, its limit: "
                        "try again later"
                    )
            elif mode == enrich_pb2.JOB_MODE_SCHEDULED:
                if mine >= quotas.tenant_max_scheduled_jobs:
                    raise ResourceExhausted(
                        f"tenant {tenant_id!r} already has {mine} active scheduled jobs, its "
                        "limit: cancel one before creating another"
                    )
            elif mine >= quotas.tenant_max_batch_jobs:
                raise ResourceExhausted(
                    f"tenant {tenant_id!r} already has {mine} batch jobs pending or running, "
                    "its limit: wait for one to finish or cancel one"
                )
            active = _Active(tenant_id, mode)
            self._active[job_id] = active
            return active

    def get_job(self, tenant_id: str, job_id: str) -> enrich_pb2.EnrichmentJob:
        record = self.jobs.get(tenant_id, job_id)
        if record is None:
            raise NotFound(f"job {job_id!r} not found")
        return record.job

    def list_jobs(
        self, tenant_id: str, page_size: int, page_token: str
    ) -> tuple[list[enrich_pb2.EnrichmentJob], str]:
        if not 0 <= page_size <= 1000:
            raise InvalidArgument(
                "page_size must be 1..1000", violations=[Violation("page_size", "1..1000")]
            )
        size = page_size or 100
        # The token is bound to the tenant: another tenant's token (or an altered one) is
        # refused with INVALID_ARGUMENT instead of listing from an arbitrary position.
        binding = tenant_id.encode()
        after = self._page_tokens.verify(page_token, binding).decode() if page_token else None
        records = self.jobs.list_page(tenant_id, size + 1, after)
        page = records[:size]
        token = (
            self._page_tokens.issue(binding, page[-1].job.job_id.encode())
            if len(records) > size
            else ""
        )
        return [r.job for r in page], token

    def cancel_job(self, tenant_id: str, job_id: str) -> enrich_pb2.EnrichmentJob:
        record = self.jobs.get(tenant_id, job_id)
        if record is None:
            raise NotFound(f"job {job_id!r} not found")
        if record.job.state in TERMINAL:
            return record.job
        with self._lock:
            active = self._active.get(job_id)
        if active is not None:
            active.cancelled.cancel()
            if active.stream is not None:
                active.stream.stop()
            self.engine.cancel(job_id)
        # The job's thread also marks it; saving here makes the answer immediate and covers a
        # job that was not running in this process.
        self._finish(record, enrich_pb2.JOB_STATE_CANCELLED)
        return record.job

    # -- running

    def start(self) -> None:
        """Recovers jobs left PENDING / RUNNING by a previous process and starts ticking.

        Recovered jobs were admitted once, so they are not refused again; batch jobs still
        wait for a slot in their tenant's turn."""
        for record in self.jobs.all_records():
            if record.job.state in (enrich_pb2.JOB_STATE_PENDING, enrich_pb2.JOB_STATE_RUNNING):
                log.info("recovering job", extra={"job_id": record.job.job_id})
                with self._lock:
                    active = self._active.setdefault(
                        record.job.job_id, _Active(record.tenant_id, record.job.mode)
                    )
                self._launch(record, active)
        self._ticker = threading.Thread(
            target=self._tick_loop, name="enrich-scheduler", daemon=True
        )
        self._ticker.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stopped.set()
        with self._lock:
            active = list(self._active.items())
            streams = list(self._stream_threads.values())
        for job_id, item in active:
            # Not cancelled: the records stay RUNNING so the next process resumes them.
            if item.stream is not None:
                item.stream.stop()
            elif item.mode != enrich_pb2.JOB_MODE_STREAMING:
                self.engine.cancel(job_id)
        deadline = time.monotonic() + timeout
        self._slots.close(timeout)
        for thread in streams:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _launch(self, record: JobRecord, active: _Active) -> None:
        job_id = record.job.job_id
        if record.job.mode == enrich_pb2.JOB_MODE_BATCH:
            self._slots.submit(record.tenant_id, lambda: self._run_batch_job(record, active))
        elif record.job.mode == enrich_pb2.JOB_MODE_STREAMING:
            # Streams hold their thread for life: never one of the batch slots.
            thread = threading.Thread(
                target=self._run_stream_job,
                args=(record, active),
                name=f"enrich-stream-{job_id}",
                daemon=True,
            )
            with self._lock:
                self._stream_threads[job_id] = thread
            thread.start()
        else:
            self._mark_running(record)  # the ticker runs its windows
            self._index(job_id, active, record.next_run_micros)

    def _mark_running(self, record: JobRecord) -> bool:
        """Saves the job RUNNING; False when it ended meanwhile (cancelled before it ran)."""
        if record.job.state == enrich_pb2.JOB_STATE_RUNNING:
            return True
        latest = self.jobs.get(record.tenant_id, record.job.job_id)
        if latest is not None and latest.job.state in TERMINAL:
            record.job.CopyFrom(latest.job)
            return False
        record.job.state = enrich_pb2.JOB_STATE_RUNNING
        record.job.start_time.CopyFrom(schema.timestamp_from_micros(self.clock()))
        self.jobs.save(record)
        return True

    def _finish(self, record: JobRecord, state: int, error: str = "") -> None:
        try:
            latest = self.jobs.get(record.tenant_id, record.job.job_id)
            if latest is not None and latest.job.state in TERMINAL:
                record.job.CopyFrom(latest.job)
                return  # cancelled meanwhile: keep the first terminal state
            record.job.state = state  # type: ignore[assignment]
            record.job.error = error
            record.job.end_time.CopyFrom(schema.timestamp_from_micros(self.clock()))
            self.jobs.save(record)
        finally:
            with self._lock:
                self._active.pop(record.job.job_id, None)
                self._stream_threads.pop(record.job.job_id, None)

    def _progress_saver(self, record: JobRecord) -> Callable[[float, enrich_pb2.JobCounters], None]:
        def save(progress: float, counters: enrich_pb2.JobCounters) -> None:
            if record.job.state in TERMINAL:
                return
            record.job.progress = progress
            record.job.counters.CopyFrom(counters)
            self.jobs.save(record)

        return save

    def _run_batch_job(self, record: JobRecord, active: _Active) -> None:
        job = record.job
        cancelled = active.cancelled
        try:
            cancelled.raise_if_cancelled(job.job_id)  # cancelled while it waited for a slot
            spec = self._checked_spec(record.tenant_id, job.spec_version)
            if not self._mark_running(record):
                return
            job.progress = 0.0
            counters = self.engine.run_batch(
                BatchWork(
                    job.job_id,
                    record.tenant_id,
                    spec,
                    schema.micros(job.time_range.start_time),
                    schema.micros(job.time_range.end_time),
                    cancelled,
                    self._progress_saver(record),
                )
            )
            cancelled.raise_if_cancelled(job.job_id)
            job.counters.CopyFrom(counters)
            job.progress = 1.0
            self._finish(record, enrich_pb2.JOB_STATE_SUCCEEDED)
        except Exception as exc:
            if cancelled.is_set():
                self._finish(record, enrich_pb2.JOB_STATE_CANCELLED)
            elif self._stopped.is_set():  # the engine interrupted it: not a cancel
                log.info(
                    "job interrupted by shutdown; resumes on restart", extra={"job_id": job.job_id}
                )
            elif isinstance(exc, Cancelled):
                self._finish(record, enrich_pb2.JOB_STATE_CANCELLED)
            else:
                log.exception("batch job failed", extra={"job_id": job.job_id})
                self._finish(record, enrich_pb2.JOB_STATE_FAILED, _describe(exc))

    def _run_stream_job(self, record: JobRecord, active: _Active) -> None:
        job = record.job
        cancelled = active.cancelled
        totals = enrich_pb2.JobCounters()
        lock = threading.Lock()

        def on_batch(counters: enrich_pb2.JobCounters) -> None:
            with lock:
                for name in ("read", "enriched", "unmatched", "failed"):
                    setattr(totals, name, getattr(totals, name) + getattr(counters, name))
                job.counters.CopyFrom(totals)
                if job.state not in TERMINAL:
                    self.jobs.save(record)

        try:
            cancelled.raise_if_cancelled(job.job_id)
            spec = self._checked_spec(record.tenant_id, job.spec_version)
            totals.CopyFrom(job.counters)
            stream = self.engine.start_stream(
                StreamWork(
                    job.job_id,
                    record.tenant_id,
                    spec,
                    _duration_micros(job.trigger_interval) / 1e6 or 1.0,
                    on_batch,
                )
            )
            active.stream = stream
            if cancelled.is_set() or not self._mark_running(record):
                stream.stop()  # cancelled while it started
                return
            while stream.is_active() and not cancelled.is_set() and not self._stopped.is_set():
                cancelled.wait(0.5)
            if cancelled.is_set():
                stream.stop()
                self._finish(record, enrich_pb2.JOB_STATE_CANCELLED)
            elif not self._stopped.is_set():
                error = stream.error()
                self._finish(
                    record,
                    enrich_pb2.JOB_STATE_FAILED if error else enrich_pb2.JOB_STATE_SUCCEEDED,
                    error or "",
                )
        except Exception as exc:
            if cancelled.is_set() or isinstance(exc, Cancelled):
                self._finish(record, enrich_pb2.JOB_STATE_CANCELLED)
            elif not self._stopped.is_set():
                log.exception("streaming job failed", extra={"job_id": job.job_id})
                self._finish(record, enrich_pb2.JOB_STATE_FAILED, _describe(exc))

    # -- scheduling

    def _index(self, job_id: str, active: _Active, due_micros: int) -> None:
        """Makes ``due_micros`` the time the ticker next looks at the schedule ``job_id``.

        The heap may hold older entries of the job: only the one matching
        ``active.indexed_at_micros`` is live, the others are dropped when popped."""
        with self._lock:
            if self._active.get(job_id) is not active:
                return  # finished or cancelled meanwhile
            active.indexed_at_micros = due_micros
            heapq.heappush(self._due, (due_micros, job_id))

    def _pop_due(self, now: int) -> list[tuple[str, _Active]]:
        """Takes every live index entry due at ``now`` out of the heap."""
        due: list[tuple[str, _Active]] = []
        with self._lock:
            while self._due and self._due[0][0] <= now:
                at, job_id = heapq.heappop(self._due)
                active = self._active.get(job_id)
                if active is None or active.indexed_at_micros != at:
                    continue  # superseded, or the job ended
                active.indexed_at_micros = None
                due.append((job_id, active))
        return due

    def _tick_loop(self) -> None:
        while not self._stopped.wait(self.tick_seconds):
            try:
                self.tick()
            except Exception:
                log.exception("scheduler tick failed")

    def tick(self) -> None:
        """Renews the claims of the windows running here and starts every due window whose
        schedule has no window running, is not waiting out a backoff and is claimed here.

        Reads only the records of due windows (the index says which), never the table."""
        now = self.clock()
        with self._lock:
            running = [(job_id, a) for job_id, a in self._active.items() if a.window_running]
        for job_id, active in running:
            with active.claim_lock:
                renew = active.claim if now >= active.renew_claim_at_micros else None
            if renew is not None:
                self._renew_claim(job_id, *renew, now)
        for job_id, active in self._pop_due(now):
            try:
                self._start_due_window(job_id, active, now)
            except Exception:
                log.exception("could not start a due window", extra={"job_id": job_id})
                self._index(job_id, active, now)  # looked at again at the next tick

    def _start_due_window(self, job_id: str, active: _Active, now: int) -> None:
        with self._lock:
            if active.window_running:
                return  # the window's end indexes the job again
            retry_at = active.retry_at_micros
        if now < retry_at:
            self._index(job_id, active, retry_at)
            return
        record = self.jobs.get(active.tenant_id, job_id)
        if (
            record is None
            or record.job.mode != enrich_pb2.JOB_MODE_SCHEDULED
            or record.job.state != enrich_pb2.JOB_STATE_RUNNING
        ):
            with self._lock:  # ended, possibly on another replica: no longer scheduled here
                if self._active.get(job_id) is active:
                    del self._active[job_id]
            return
        if record.next_run_micros > now:
            self._index(job_id, active, record.next_run_micros)
            return
        if not self._claim(record, now):
            # Another replica runs (or just finished) it: look again at the next tick, which
            # takes the window over once that replica's lease expired.
            self._index(job_id, active, now)
            return
        with self._lock:
            active.window_running = True
        with active.claim_lock:
            active.claim = (record.tenant_id, record.next_run_micros)
            active.renew_claim_at_micros = now + self.claim_lease_micros // 2
        self._slots.submit(record.tenant_id, lambda: self._run_window(record, active))

    def _claim(self, record: JobRecord, now: int) -> bool:
        """Claims the record's next window and checks it still is the job's next window."""
        tenant_id, job_id, due = record.tenant_id, record.job.job_id, record.next_run_micros
        if not self.jobs.claim_window(
            tenant_id, job_id, due, self.owner_id, now, self.claim_lease_micros
        ):
            return False
        latest = self.jobs.get(tenant_id, job_id)
        # ``record`` may predate another replica finishing this window and advancing next_run.
        return (
            latest is not None
            and latest.job.state == enrich_pb2.JOB_STATE_RUNNING
            and latest.next_run_micros == due
        )

    def _renew_claim(self, job_id: str, tenant_id: str, due: int, now: int) -> None:
        with self._lock:
            active = self._active.get(job_id)
        if active is None:
            return
        with active.claim_lock:
            if active.claim != (tenant_id, due):
                return  # the window ended meanwhile
            try:
                renewed = self.jobs.claim_window(
                    tenant_id, job_id, due, self.owner_id, now, self.claim_lease_micros
                )
            except Exception:
                log.warning(
                    "could not renew a window claim", extra={"job_id": job_id}, exc_info=True
                )
                return
            if not renewed:
                # The lease expired before this renewal and another replica took the window
                # over; windows' output is idempotent, so the overlap costs work, not correctness.
                log.warning("window claim taken over by another replica", extra={"job_id": job_id})
            active.renew_claim_at_micros = now + self.claim_lease_micros // 2

    def _end_claim(self, job_id: str) -> None:
        """Stops renewing the claim of the window that ends (waits for a renewal in flight)."""
        with self._lock:
            active = self._active.get(job_id)
        if active is not None:
            with active.claim_lock:
                active.claim = None

    def _hold_claim(self, record: JobRecord, due: int, now: int, lease_micros: int) -> None:
        """Sets this replica's claim on ``due`` to expire ``lease_micros`` after ``now`` (0
        releases it). Best effort: when this fails, the claim expires with its running lease."""
        try:
            self.jobs.claim_window(
                record.tenant_id, record.job.job_id, due, self.owner_id, now, lease_micros
            )
        except Exception:
            log.warning(
                "could not update a window claim",
                extra={"job_id": record.job.job_id},
                exc_info=True,
            )

    def _run_window(self, record: JobRecord, active: _Active) -> None:
        job = record.job
        cancelled = active.cancelled
        due = record.next_run_micros
        start, end = scheduled_window(job.schedule, due)
        failures, retry_at = 0, 0
        next_look: int | None = None
        try:
            cancelled.raise_if_cancelled(job.job_id)
            spec = self._checked_spec(record.tenant_id, job.spec_version)
            counters = self.engine.run_batch(
                BatchWork(
                    job.job_id, record.tenant_id, spec, start, end, cancelled, lambda _p, _c: None
                )
            )
            cancelled.raise_if_cancelled(job.job_id)
            for name in ("read", "enriched", "unmatched", "failed"):
                setattr(job.counters, name, getattr(job.counters, name) + getattr(counters, name))
            record.next_run_micros = next_run_after(job.schedule, due, self.clock())
            if self._still_running(record):
                job.error = ""
                self.jobs.save(record)
            next_look = record.next_run_micros
        except Exception as exc:
            self._end_claim(job.job_id)  # before the claim is held or released below
            failed_at = self.clock()
            if self._stopped.is_set():
                # Released, so the replica that takes over need not wait for the lease.
                self._hold_claim(record, due, failed_at, 0)
            elif not cancelled.is_set() and not isinstance(exc, Cancelled):
                failures = active.failures + 1
                delay = retry_delay_micros(
                    job.schedule, failures, self.retry_initial_micros, self.retry_max_micros
                )
                retry_at = next_look = failed_at + delay
                log.exception(
                    "scheduled window failed; retrying it after a backoff",
                    extra={"job_id": job.job_id, "attempt": failures, "retry_in_s": delay / 1e6},
                )
                # Held until the retry, so the other replicas back off with this one.
                self._hold_claim(record, due, failed_at, delay)
                self._save_window_error(record, _describe(exc))
        finally:
            self._end_claim(job.job_id)
            with self._lock:
                active.window_running = False
                active.failures, active.retry_at_micros = failures, retry_at
            if next_look is not None:
                self._index(job.job_id, active, next_look)

    def _still_running(self, record: JobRecord) -> bool:
        """False when the job was cancelled meanwhile, possibly by another replica."""
        latest = self.jobs.get(record.tenant_id, record.job.job_id)
        return latest is not None and latest.job.state == enrich_pb2.JOB_STATE_RUNNING

    def _save_window_error(self, record: JobRecord, error: str) -> None:
        """Saves ``error`` on the stored record, so nothing of the failed attempt (counters,
        an advanced next_run whose save failed) is kept: the same window runs again."""
        try:
            latest = self.jobs.get(record.tenant_id, record.job.job_id)
            if latest is not None and latest.job.state == enrich_pb2.JOB_STATE_RUNNING:
                latest.job.error = error
                self.jobs.save(latest)
        except Exception:  # the store may be what failed the window; the retry saves again
            log.warning(
                "could not save a window's error",
                extra={"job_id": record.job.job_id},
                exc_info=True,
            )


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    return f"{type(exc).__name__}: {first}"[:1000]
