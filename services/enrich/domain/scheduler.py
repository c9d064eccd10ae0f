"""Scheduled windows: the ticker, its due-window index, the claims between replicas and the
retry backoff of a failed window. ``WindowScheduler`` is the scheduling half of
``enrich.domain.jobs.JobManager`` (which owns the state it reads: the active jobs, the slots,
the stores and the engine).

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
  job is created, recovered, discovered, claimed, finished or cancelled, so a tick reads only
  the records of the windows that are due, never the whole job table.
- Discovery: every replica ticks every schedule of the deployment, not only those it created
  or recovered at its start. Every ``rescan_seconds`` the ticker asks the job store for the
  running schedules (``JobStore.scheduled_records``: only those rows, not the job table) and
  indexes those it does not know yet, created by another replica since this one started.
  So when the replica that created a schedule dies, the others take its window over once the
  lease expires (the claim decides who), without a restart; a schedule cancelled on another
  replica leaves this one's index at its next due time (its record is no longer RUNNING).
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
from collections.abc import Callable
from dataclasses import dataclass, field

from enrich import metrics
from enrich.domain.fair_shares import FairSlots
from enrich.domain.records import JobMode, JobRecord, JobState, Schedule
from enrich.domain.spec import CheckedSpec
from enrich.domain.windows import next_run_after, retry_delay_micros, scheduled_window
from enrich.domain.work import BatchWork, CancellationToken, Cancelled
from enrich.ports import Engine, JobStore, RunningStream

log = logging.getLogger(__name__)

DEFAULT_RETRY_INITIAL_MICROS = 5_000_000
DEFAULT_RETRY_MAX_MICROS = 600_000_000
DEFAULT_CLAIM_LEASE_MICROS = 120_000_000


def default_owner_id() -> str:
    """Names this process in window claims: the host (the pod in Kubernetes), the pid and a
    random part, since a restarted container may get the same pid."""
    host = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname())[:64] or "host"
    return f"{host}-{os.getpid()}-{secrets.token_hex(4)}"


@dataclass
class ActiveJob:
    tenant_id: str
    mode: JobMode
    cancelled: CancellationToken = field(default_factory=CancellationToken)
    stream: RunningStream | None = None
    window_running: bool = False  # scheduled: a window claimed here, queued or running
    running: bool = False  # at work: a batch job, a window on its slot, a stream (metrics)
    # Scheduled jobs only. Guarded by JobManager._lock:
    failures: int = 0  # of the current window, in a row, in this process
    retry_at_micros: int = 0
    indexed_at_micros: int | None = None  # the live entry of this job in the due index
    # Guarded by claim_lock, so no renewal extends a claim after its window ended:
    claim: tuple[str, int] | None = None  # (tenant, due) of the window running here
    renew_claim_at_micros: int = 0
    claim_lock: threading.Lock = field(default_factory=threading.Lock)


class WindowScheduler:
    """The scheduling methods of the job manager (see the module docstring)."""

    jobs: JobStore
    engine: Engine
    clock: Callable[[], int]
    tick_seconds: float
    rescan_seconds: float
    owner_id: str
    retry_initial_micros: int
    retry_max_micros: int
    claim_lease_micros: int
    _slots: FairSlots
    _active: dict[str, ActiveJob]
    _due: list[tuple[int, str]]
    _lock: threading.Lock
    _stopped: threading.Event

    def _checked_spec(self, tenant_id: str, version: int) -> CheckedSpec:
        raise NotImplementedError

    def _index(self, job_id: str, active: ActiveJob, due_micros: int) -> None:
        """Makes ``due_micros`` the time the ticker next looks at the schedule ``job_id``.

        The heap may hold older entries of the job: only the one matching
        ``active.indexed_at_micros`` is live, the others are dropped when popped."""
        with self._lock:
            if self._active.get(job_id) is not active:
                return  # finished or cancelled meanwhile
            active.indexed_at_micros = due_micros
            heapq.heappush(self._due, (due_micros, job_id))

    def _pop_due(self, now: int) -> list[tuple[str, ActiveJob]]:
        """Takes every live index entry due at ``now`` out of the heap."""
        due: list[tuple[str, ActiveJob]] = []
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
        next_scan = time.monotonic() + self.rescan_seconds
        while not self._stopped.wait(self.tick_seconds):
            if time.monotonic() >= next_scan:
                next_scan = time.monotonic() + self.rescan_seconds
                try:
                    self.discover_schedules()
                except Exception:
                    log.exception("looking for other replicas' schedules failed")
            try:
                self.tick()
            except Exception:
                log.exception("scheduler tick failed")
            self.report_job_counts()

    def job_counts(self) -> dict[str, int]:
        """This replica's jobs by ``metrics.JOB_STATES`` state."""
        counts = dict.fromkeys(metrics.JOB_STATES, 0)
        with self._lock:
            for active in self._active.values():
                if active.running:
                    counts["running"] += 1
                elif active.mode == JobMode.SCHEDULED and not active.window_running:
                    counts["scheduled"] += 1
                else:
                    counts["pending"] += 1
        return counts

    def report_job_counts(self) -> None:
        """Sets ``eventpipe_enrich_jobs`` (the ticker does at every tick)."""
        metrics.set_job_counts(self.job_counts())

    def discover_schedules(self) -> int:
        """Indexes the running schedules this replica does not tick yet (created or recovered
        by another replica since this one started), at their persisted next run; returns how
        many. A window of theirs runs here only if this replica wins its claim."""
        found = 0
        for record in self.jobs.scheduled_records():
            job_id = record.job.job_id
            if record.job.mode != JobMode.SCHEDULED or record.job.state != JobState.RUNNING:
                continue  # a PENDING one is about to be marked RUNNING by its creator
            with self._lock:
                if self._stopped.is_set() or job_id in self._active:
                    continue
                active = ActiveJob(record.tenant_id, JobMode.SCHEDULED)
                self._active[job_id] = active
            log.info("ticking a schedule another replica started", extra={"job_id": job_id})
            self._index(job_id, active, record.next_run_micros)
            found += 1
        return found

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

    def _start_due_window(self, job_id: str, active: ActiveJob, now: int) -> None:
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
            or record.job.mode != JobMode.SCHEDULED
            or record.job.state != JobState.RUNNING
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
            and latest.job.state == JobState.RUNNING
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

    def _run_window(self, record: JobRecord, active: ActiveJob) -> None:
        job = record.job
        cancelled = active.cancelled
        due = record.next_run_micros
        schedule = job.schedule or Schedule()  # a scheduled job has one (validate_job)
        start, end = scheduled_window(schedule, due)
        failures, retry_at = 0, 0
        next_look: int | None = None
        began = self.clock()
        outcome: str | None = None  # how the window ended, for the duration metric
        with self._lock:
            active.running = True
        try:
            cancelled.raise_if_cancelled(job.job_id)
            spec = self._checked_spec(record.tenant_id, job.spec_version)
            counters = self.engine.run_batch(
                BatchWork(
                    job.job_id, record.tenant_id, spec, start, end, cancelled, lambda _p, _c: None
                )
            )
            cancelled.raise_if_cancelled(job.job_id)
            job.counters.add(counters)
            record.next_run_micros = next_run_after(schedule, due, self.clock())
            if self._still_running(record):
                job.error = ""
                self.jobs.save(record)
            next_look = record.next_run_micros
            outcome = "succeeded"
        except Exception as exc:
            self._end_claim(job.job_id)  # before the claim is held or released below
            failed_at = self.clock()
            if self._stopped.is_set():
                # Released, so the replica that takes over need not wait for the lease.
                self._hold_claim(record, due, failed_at, 0)
            elif cancelled.is_set() or isinstance(exc, Cancelled):
                outcome = "cancelled"
            else:
                outcome = "failed"
                failures = active.failures + 1
                delay = retry_delay_micros(
                    schedule, failures, self.retry_initial_micros, self.retry_max_micros
                )
                retry_at = next_look = failed_at + delay
                log.exception(
                    "scheduled window failed; retrying it after a backoff",
                    extra={"job_id": job.job_id, "attempt": failures, "retry_in_s": delay / 1e6},
                )
                # Held until the retry, so the other replicas back off with this one.
                self._hold_claim(record, due, failed_at, delay)
                self._save_window_error(record, describe_failure(exc))
        finally:
            self._end_claim(job.job_id)
            if outcome is not None:
                metrics.observe_job_end("scheduled", outcome, (self.clock() - began) / 1e6)
            with self._lock:
                active.window_running = False
                active.running = False
                active.failures, active.retry_at_micros = failures, retry_at
            if next_look is not None:
                self._index(job.job_id, active, next_look)

    def _still_running(self, record: JobRecord) -> bool:
        """False when the job was cancelled meanwhile, possibly by another replica."""
        latest = self.jobs.get(record.tenant_id, record.job.job_id)
        return latest is not None and latest.job.state == JobState.RUNNING

    def _save_window_error(self, record: JobRecord, error: str) -> None:
        """Saves ``error`` on the stored record, so nothing of the failed attempt (counters,
        an advanced next_run whose save failed) is kept: the same window runs again."""
        try:
            latest = self.jobs.get(record.tenant_id, record.job.job_id)
            if latest is not None and latest.job.state == JobState.RUNNING:
                latest.job.error = error
                self.jobs.save(latest)
        except Exception:  # the store may be what failed the window; the retry saves again
            log.warning(
                "could not save a window's error",
                extra={"job_id": record.job.job_id},
                exc_info=True,
            )


def describe_failure(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    return f"{type(exc).__name__}: {first}"[:1000]
