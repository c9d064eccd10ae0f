"""Job lifecycle: validation, running batch / scheduled / streaming jobs, cancel, recovery.

Jobs run on one shared Spark engine (see docs/enrich.md). Every state change is saved to the
job store first, so a restart of the service finds each job where it was: PENDING or RUNNING
batch jobs run again from the start (their output is idempotent), scheduled jobs resume at
their persisted next window, streaming jobs restart from their checkpoint.

Scheduled windows: see enrich.domain.scheduler; pure window arithmetic: enrich.domain.windows.

Fair shares (``Quotas``, enrich.domain.fair_shares). Batch jobs and scheduled windows wait for
one of ``max_running_jobs`` slots in a queue served round-robin across tenants, a tenant holding
at most ``tenant_max_running_jobs`` of them; streams run on threads of their own, outside those
slots, so streams never hold batch work back. A create beyond a tenant's (or the process') limit
of pending batch jobs, schedules or streams is refused with RESOURCE_EXHAUSTED.

Cancel. Each job has a ``CancellationToken``: cancel sets it and asks the engine to interrupt
the job (Spark: cancel its job group and stop its driver call, planning included); the job's
thread checks the token between steps, ends CANCELLED and frees its slot.
"""

from __future__ import annotations

import copy
import logging
import secrets
import threading
import time
from collections.abc import Callable

from eventpipe.core.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Violation,
)
from eventpipe.core.page_tokens import PageTokenCodec

from enrich import metrics
from enrich.domain.fair_shares import FairSlots, Quotas
from enrich.domain.records import (
    TERMINAL,
    Job,
    JobMode,
    JobRecord,
    JobState,
    TimeRange,
    new_job_id,
)
from enrich.domain.scheduler import (
    DEFAULT_CLAIM_LEASE_MICROS,
    DEFAULT_RETRY_INITIAL_MICROS,
    DEFAULT_RETRY_MAX_MICROS,
    ActiveJob,
    WindowScheduler,
    default_owner_id,
    describe_failure,
)
from enrich.domain.spec import CheckedSpec, Spec, validate_spec
from enrich.domain.windows import batch_window, validate_job
from enrich.domain.work import BatchWork, Cancelled, Counters, StreamWork
from enrich.ports import Engine, JobStore, SpecStore

log = logging.getLogger(__name__)

DEFAULT_TRIGGER_MICROS = 1_000_000
LIST_ENRICHMENT_JOBS = "eventpipe.enrich.v1.EnrichService/ListEnrichmentJobs"


class JobManager(WindowScheduler):
    """Specs and jobs of every tenant: create, list, cancel, run, recover; the scheduling
    half is ``WindowScheduler``."""

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
        rescan_seconds: float = 30.0,
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
        self.rescan_seconds = rescan_seconds
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
        self._active: dict[str, ActiveJob] = {}
        self._due: list[tuple[int, str]] = []  # heap of (due micros, job id); see _index
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._ticker: threading.Thread | None = None

    # -- specs

    def put_spec(self, tenant_id: str, spec: Spec) -> Spec:
        validate_spec(spec)
        stored = spec.copy()
        stored.create_micros = self.clock()
        return self.specs.put(tenant_id, stored)

    def get_spec(self, tenant_id: str, version: int = 0) -> Spec:
        spec = self.specs.get(tenant_id, version)
        if spec is None:
            what = f"version {version}" if version else "any version"
            raise NotFound(f"tenant {tenant_id!r} has no enrichment spec ({what})")
        return spec

    def _checked_spec(self, tenant_id: str, version: int) -> CheckedSpec:
        spec = self.get_spec(tenant_id, version)
        return validate_spec(spec, version=spec.version)

    # -- jobs

    def create_job(self, tenant_id: str, job: Job) -> Job:
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
        record = Job(
            job_id=new_job_id(now),
            mode=job.mode,
            spec_version=spec.version,
            state=JobState.PENDING,
            create_micros=now,
        )
        if job.mode == JobMode.BATCH:
            record.time_range = TimeRange(*batch_window(job, now, self.retention_micros))
        elif job.mode == JobMode.SCHEDULED:
            record.schedule = copy.deepcopy(job.schedule)
        elif job.trigger_interval_micros is None:
            record.trigger_interval_micros = DEFAULT_TRIGGER_MICROS
        else:
            record.trigger_interval_micros = job.trigger_interval_micros
        stored = JobRecord(tenant_id, record, next_run_micros=now)
        active = self._admit(tenant_id, record.job_id, job.mode)
        try:
            self.jobs.save(stored)
        except Exception:
            with self._lock:
                self._active.pop(record.job_id, None)
            raise
        answer = record.copy()  # the worker thread mutates ``record`` from now on
        self._launch(stored, active)
        return answer

    def _admit(self, tenant_id: str, job_id: str, mode: JobMode) -> ActiveJob:
        """Reserves the job's place in the tenant's quota, or refuses it."""
        quotas = self.quotas
        with self._lock:
            mine = sum(
                1 for a in self._active.values() if a.tenant_id == tenant_id and a.mode == mode
            )
            if mode == JobMode.STREAMING:
                streams = sum(1 for a in self._active.values() if a.mode == JobMode.STREAMING)
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
            elif mode == JobMode.SCHEDULED:
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
            active = ActiveJob(tenant_id, mode)
            self._active[job_id] = active
            return active

    def get_job(self, tenant_id: str, job_id: str) -> Job:
        record = self.jobs.get(tenant_id, job_id)
        if record is None:
            raise NotFound(f"job {job_id!r} not found")
        return record.job

    def list_jobs(self, tenant_id: str, page_size: int, page_token: str) -> tuple[list[Job], str]:
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

    def cancel_job(self, tenant_id: str, job_id: str) -> Job:
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
        self._finish(record, JobState.CANCELLED)
        return record.job

    # -- running

    def start(self) -> None:
        """Recovers jobs left PENDING / RUNNING by a previous process and starts ticking.

        Recovered jobs were admitted once, so they are not refused again; batch jobs still
        wait for a slot in their tenant's turn."""
        for record in self.jobs.all_records():
            if record.job.state in (JobState.PENDING, JobState.RUNNING):
                log.info("recovering job", extra={"job_id": record.job.job_id})
                with self._lock:
                    active = self._active.setdefault(
                        record.job.job_id, ActiveJob(record.tenant_id, record.job.mode)
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
            elif item.mode != JobMode.STREAMING:
                self.engine.cancel(job_id)
        deadline = time.monotonic() + timeout
        self._slots.close(timeout)
        for thread in streams:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _launch(self, record: JobRecord, active: ActiveJob) -> None:
        job_id = record.job.job_id
        if record.job.mode == JobMode.BATCH:
            self._slots.submit(record.tenant_id, lambda: self._run_batch_job(record, active))
        elif record.job.mode == JobMode.STREAMING:
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
        if record.job.state == JobState.RUNNING:
            return True
        latest = self.jobs.get(record.tenant_id, record.job.job_id)
        if latest is not None and latest.job.state in TERMINAL:
            record.job.assign(latest.job)
            return False
        record.job.state = JobState.RUNNING
        record.job.started_micros = self.clock()
        self.jobs.save(record)
        return True

    def _finish(self, record: JobRecord, state: JobState, error: str = "") -> None:
        try:
            latest = self.jobs.get(record.tenant_id, record.job.job_id)
            if latest is not None and latest.job.state in TERMINAL:
                record.job.assign(latest.job)
                return  # cancelled meanwhile: keep the first terminal state
            record.job.state = state
            record.job.error = error
            record.job.ended_micros = self.clock()
            self.jobs.save(record)
            if record.job.mode != JobMode.SCHEDULED:  # a schedule's windows are counted
                began = record.job.started_micros or record.job.create_micros
                metrics.observe_job_end(
                    record.job.mode.name.lower(),
                    state.name.lower(),
                    (record.job.ended_micros - (began or record.job.ended_micros)) / 1e6,
                )
        finally:
            with self._lock:
                self._active.pop(record.job.job_id, None)
                self._stream_threads.pop(record.job.job_id, None)

    def _progress_saver(self, record: JobRecord) -> Callable[[float, Counters], None]:
        def save(progress: float, counters: Counters) -> None:
            if record.job.state in TERMINAL:
                return
            record.job.progress = progress
            record.job.counters = copy.copy(counters)
            self.jobs.save(record)

        return save

    def _run_batch_job(self, record: JobRecord, active: ActiveJob) -> None:
        job = record.job
        cancelled = active.cancelled
        try:
            cancelled.raise_if_cancelled(job.job_id)  # cancelled while it waited for a slot
            spec = self._checked_spec(record.tenant_id, job.spec_version)
            if not self._mark_running(record):
                return
            with self._lock:
                active.running = True
            job.progress = 0.0
            counters = self.engine.run_batch(
                BatchWork(
                    job.job_id,
                    record.tenant_id,
                    spec,
                    job.time_range.start_micros or 0,
                    job.time_range.end_micros or 0,
                    cancelled,
                    self._progress_saver(record),
                )
            )
            cancelled.raise_if_cancelled(job.job_id)
            job.counters = copy.copy(counters)
            job.progress = 1.0
            self._finish(record, JobState.SUCCEEDED)
        except Exception as exc:
            if cancelled.is_set():
                self._finish(record, JobState.CANCELLED)
            elif self._stopped.is_set():  # the engine interrupted it: not a cancel
                log.info(
                    "job interrupted by shutdown; resumes on restart", extra={"job_id": job.job_id}
                )
            elif isinstance(exc, Cancelled):
                self._finish(record, JobState.CANCELLED)
            else:
                log.exception("batch job failed", extra={"job_id": job.job_id})
                self._finish(record, JobState.FAILED, describe_failure(exc))

    def _run_stream_job(self, record: JobRecord, active: ActiveJob) -> None:
        job = record.job
        cancelled = active.cancelled
        totals = Counters()
        lock = threading.Lock()

        def on_batch(counters: Counters) -> None:
            with lock:
                totals.add(counters)
                job.counters = copy.copy(totals)
                if job.state not in TERMINAL:
                    self.jobs.save(record)

        try:
            cancelled.raise_if_cancelled(job.job_id)
            spec = self._checked_spec(record.tenant_id, job.spec_version)
            totals.add(job.counters)
            stream = self.engine.start_stream(
                StreamWork(
                    job.job_id,
                    record.tenant_id,
                    spec,
                    (job.trigger_interval_micros or 0) / 1e6 or 1.0,
                    on_batch,
                )
            )
            active.stream = stream
            if cancelled.is_set() or not self._mark_running(record):
                stream.stop()  # cancelled while it started
                return
            with self._lock:
                active.running = True
            while stream.is_active() and not cancelled.is_set() and not self._stopped.is_set():
                cancelled.wait(0.5)
            if cancelled.is_set():
                stream.stop()
                self._finish(record, JobState.CANCELLED)
            elif not self._stopped.is_set():
                error = stream.error()
                self._finish(
                    record,
                    JobState.FAILED if error else JobState.SUCCEEDED,
                    error or "",
                )
        except Exception as exc:
            if cancelled.is_set() or isinstance(exc, Cancelled):
                self._finish(record, JobState.CANCELLED)
            elif not self._stopped.is_set():
                log.exception("streaming job failed", extra={"job_id": job.job_id})
                self._finish(record, JobState.FAILED, describe_failure(exc))
