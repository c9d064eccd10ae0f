"""The Spark engine: the session's lifecycle (probe, rebuild, bounded and interruptible driver
calls), the key-range reads, and the ``enrich.ports.Engine`` methods, which delegate to the
modules of ``enrich.adapters.spark`` by concern: ``session`` (settings, build, driver calls),
``transforms`` (pure DataFrame transforms), ``layout`` (row and Arrow layout), ``writes``
(what write tasks do), ``batch`` (a batch job's driver side) and ``streaming``.

One long-lived SparkSession per enrich process (see docs/enrich.md for why): each job runs
its actions under its own job group (cancel = ``cancelJobGroup``) and FAIR scheduler pool,
so a long backfill does not starve a streaming query's micro-batches.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eventpipe.core.storage.tables import RAW_EVENTS_TABLE
from eventpipe.core.validation import EventLimits
from pyspark.sql import DataFrame, SparkSession

from enrich.adapters import bigtable_io
from enrich.adapters.bigtable_io import BigtableTarget
from enrich.adapters.spark.batch import batch_in_driver
from enrich.adapters.spark.layout import (
    DIMENSION_SCHEMA,
    EVENT_SCHEMA,
    arrow_batches,
)
from enrich.adapters.spark.session import (
    CancelFlag,
    DriverCall,
    JobCancelled,
    SessionBroken,
    SparkSettings,
    build_session,
    call_with_timeout,
    discard_session,
    first_line,
)
from enrich.adapters.spark.streaming import (
    RestartingStream,
    StreamingHandle,
    StreamingRequest,
    start_streaming_query,
)
from enrich.adapters.spark.transforms import (
    aggregate_frame as aggregate_frame,  # re-exported: the bench imports it from here
)
from enrich.adapters.spark.transforms import (
    enrich_frame as enrich_frame,  # re-exported: the bench imports it from here
)
from enrich.adapters.spark.transforms import prepared_dimension
from enrich.domain.spec import CheckedSpec
from enrich.domain.work import BatchWork, Counters, StreamWork

log = logging.getLogger(__name__)


BatchRequest = BatchWork
"""The engine's batch request is the domain's BatchWork (the old name, kept for callers)."""


@dataclass(frozen=True)
class StreamSource:
    """Where streaming jobs read and keep their state (the service's settings)."""

    # Spark's Kafka source options: bootstrap servers and security (core.kafka.spark_kafka_options)
    kafka_options: Mapping[str, str]
    topic: str
    checkpoint_root: Path
    dimension_refresh_seconds: float = 30.0
    event_limits: EventLimits = field(default_factory=EventLimits)


class SparkEngine:
    """Runs batch and streaming enrichments on one shared SparkSession; implements the job
    manager's ``enrich.ports.Engine`` (``run_batch``, ``start_stream``, ``cancel``)."""

    def __init__(
        self,
        settings: SparkSettings,
        target: BigtableTarget,
        run_dir: Path | None = None,
        session: SparkSession | None = None,
        *,
        cancel_grace_seconds: float = 5.0,
        probe_timeout_seconds: float = 60.0,
        streams: StreamSource | None = None,
        on_entities_changed: Callable[[list[tuple[str, str]]], None] = lambda _e: None,
    ) -> None:
        self.settings = settings
        self.streams = streams
        # Told the entities each job rewrote (the service publishes them for query's cache).
        self.on_entities_changed = on_entities_changed
        self.target = target
        self.run_dir = run_dir
        self.cancel_grace_seconds = cancel_grace_seconds
        self.probe_timeout_seconds = probe_timeout_seconds
        # A session passed in (tests share one per test session) is not stopped by stop().
        self._owns_session = session is None
        self._session: SparkSession | None = session
        self._lock = threading.Lock()
        self._rebuild_lock = threading.Lock()
        self._generation = 0  # + 1 per rebuilt session
        self._broken: str | None = None  # why the session is down and could not be rebuilt
        self._calls: dict[str, DriverCall] = {}

    @property
    def spark(self) -> SparkSession:
        with self._lock:
            if self._session is None:
                if self._broken is not None:
                    raise SessionBroken(self._broken)
                self._session = build_session(self.settings)
            return self._session

    @property
    def generation(self) -> int:
        """Changes when the session is rebuilt; work started on an older one died with it."""
        return self._generation

    def stop(self) -> None:
        with self._lock:
            if self._session is not None and self._owns_session:
                self._session.stop()
            self._session = None

    def cancel(self, job_id: str) -> None:
        """Cancels the job's Spark jobs and interrupts its driver call (see run_in_driver)."""
        with self._lock:
            session, call = self._session, self._calls.get(job_id)
        if call is not None:
            call.interrupt.set()
        if session is not None:
            try:
                session.sparkContext.cancelJobGroup(job_id)
            except Exception:  # a broken session has nothing left to cancel
                log.warning("could not cancel a job group", extra={"job_id": job_id}, exc_info=True)

    # -- session health

    def check_alive(self) -> None:
        """Liveness: raises while the session is broken and could not be rebuilt."""
        if self._broken is not None:
            raise SessionBroken(self._broken)

    def _probe(self, session: SparkSession, *, run_job: bool) -> None:
        """Raises unless ``session`` answers (and, with ``run_job``, runs a one-row job)."""

        def probe() -> None:
            sc = session.sparkContext
            jsc = sc._jsc
            if jsc is None or jsc.sc().isStopped():
                raise SessionBroken("the SparkContext is stopped")
            if run_job:
                session.range(1).count()

        call_with_timeout(probe, self.probe_timeout_seconds, "Spark session probe")

    def ensure_session(self) -> None:
        """Before a job: rebuilds the session when it no longer answers (the driver JVM died,
        its SparkContext was stopped), so the job runs on a working one."""
        with self._lock:
            session, generation = self._session, self._generation
        if session is None:
            if self._broken is not None:
                self._rebuild(generation, self._broken)
            return
        try:
            self._probe(session, run_job=False)
        except Exception as exc:
            self._rebuild(generation, first_line(exc))

    def recover(self, generation: int) -> bool:
        """After work started on session ``generation`` failed: True when the session broke
        (it is rebuilt here, or was already), False when it still works (the work's own fault)."""
        if generation != self._generation:
            return True
        with self._lock:
            session = self._session
        if session is None:
            return False
        try:
            self._probe(session, run_job=True)
            return False
        except Exception as exc:
            self._rebuild(generation, first_line(exc))
            return True

    def _rebuild(self, generation: int, cause: str) -> None:
        """Replaces the broken session of ``generation`` with a new one on a new driver JVM;
        when that fails too, liveness turns NOT_SERVING (``check_alive``)."""
        with self._rebuild_lock:
            if generation != self._generation:
                return  # another thread rebuilt it already
            log.error("the Spark session is broken; rebuilding it", extra={"reason": cause})
            with self._lock:
                old, self._session = self._session, None
            discard_session(old)
            try:
                session = build_session(self.settings)
                self._probe(session, run_job=True)
            except Exception as exc:
                self._broken = f"the Spark session broke ({cause}) and could not be rebuilt: " + (
                    first_line(exc)
                )
                log.critical("could not rebuild the Spark session", extra={"reason": self._broken})
                return
            with self._lock:
                self._session = session
                self._owns_session = True
                self._generation += 1
                self._broken = None
            log.warning("Spark session rebuilt", extra={"generation": self._generation})

    # -- driver calls

    def run_in_driver(self, job_id: str, cancelled: CancelFlag, body: Callable[[], Any]) -> Any:
        """Runs ``body`` (the job's driver side) on a thread of its own and returns its result.

        ``cancelJobGroup`` only stops running Spark jobs: a driver call still planning (Catalyst
        analysis and optimization of a large plan run on the calling JVM thread) ignores it and
        Thread.interrupt. So a cancelled call that has not ended ``cancel_grace_seconds`` after
        its jobs were cancelled gets its JVM thread stopped (Thread.stop, Java 17: the call
        raises ThreadDeath); if even that does not end it, it is abandoned, so the job ends
        CANCELLED and frees its slot either way.
        """
        call = DriverCall(job_id)
        spark = self.spark

        def run() -> None:
            try:
                call.jvm_thread = spark.sparkContext._jvm.java.lang.Thread.currentThread()  # type: ignore[union-attr]
                call.result = body()
            except BaseException as exc:  # handed to the waiting thread
                call.error = exc
            finally:
                call.done.set()

        with self._lock:
            self._calls[job_id] = call
        thread = threading.Thread(target=run, name=f"enrich-driver-{job_id}", daemon=True)
        thread.start()
        try:
            while not call.done.wait(0.2):
                if cancelled.is_set() or call.interrupt.is_set():
                    self._interrupt(call)
                    raise JobCancelled(job_id)
            if call.error is not None:
                if cancelled.is_set() or call.interrupt.is_set():
                    raise JobCancelled(job_id) from call.error
                raise call.error
            return call.result
        finally:
            with self._lock:
                if self._calls.get(job_id) is call:
                    del self._calls[job_id]

    def _interrupt(self, call: DriverCall) -> None:
        self.cancel(call.job_id)
        if call.done.wait(self.cancel_grace_seconds):
            return
        log.warning(
            "cancelled driver call still running (planning?): stopping its thread",
            extra={"job_id": call.job_id},
        )
        try:
            if call.jvm_thread is not None:
                call.jvm_thread.stop()
        except Exception:
            log.warning("could not stop a driver thread", exc_info=True)
        if not call.done.wait(self.cancel_grace_seconds):
            log.error(
                "cancelled driver call did not stop; abandoned", extra={"job_id": call.job_id}
            )

    # -- reading

    def read_events(self, tenant_id: str, start: int, end: int) -> DataFrame:
        target = self.target
        ranges = bigtable_io.sampled_ranges(
            target, RAW_EVENTS_TABLE, bigtable_io.tenant_event_ranges(tenant_id)
        )
        slices = max(1, min(len(ranges), self.settings.partitions))
        # Contiguous runs of ranges per task: neighbouring salt prefixes share tablets.
        chunk = -(-len(ranges) // slices)
        groups = [ranges[i : i + chunk] for i in range(0, len(ranges), chunk)]

        def read(batches: Iterable[Any]) -> Iterator[Any]:
            for batch in batches:
                for index in batch.column(0).to_pylist():
                    yield from arrow_batches(
                        bigtable_io.read_events(target, groups[index], start, end), EVENT_SCHEMA
                    )

        # One task per group of ranges; rows reach Spark as Arrow batches.
        tasks = self.spark.range(len(groups), numPartitions=len(groups))
        return tasks.mapInArrow(read, EVENT_SCHEMA)

    def read_dimensions(
        self, tenant_id: str, spec: CheckedSpec
    ) -> tuple[dict[str, DataFrame], dict[str, bool]]:
        frames: dict[str, DataFrame] = {}
        broadcast: dict[str, bool] = {}
        target = self.target
        for n, join in enumerate(spec.joins):
            name = join.dimension

            def read(_: Any, name: str = name) -> Iterator[tuple[Any, ...]]:
                yield from bigtable_io.read_dimension(target, tenant_id, name)

            # One task per dimension: a version table is small next to events; large ones
            # are only hash-partitioned by the join below, not broadcast.
            rdd = self.spark.sparkContext.parallelize([0], 1).flatMap(read)
            raw = self.spark.createDataFrame(rdd, DIMENSION_SCHEMA)
            frame = prepared_dimension(raw, n, list(join.fields)).cache()
            rows = frame.count()
            frames[name] = frame
            broadcast[name] = rows <= self.settings.broadcast_max_rows
        return frames, broadcast

    # -- batch

    def run_batch(self, request: BatchWork) -> Counters:
        """Runs a batch job; a broken session is rebuilt before it, or after it failed
        (then it raises SessionBroken: this job failed with the session, the next one runs on
        the new session)."""
        self.ensure_session()
        generation = self._generation
        try:
            return self.run_in_driver(  # type: ignore[no-any-return]
                request.job_id, request.cancelled, lambda: batch_in_driver(self, request)
            )
        except JobCancelled:
            raise
        except Exception as exc:
            if self.recover(generation):
                raise SessionBroken(
                    "the Spark session broke while this job ran and was rebuilt: " + first_line(exc)
                ) from exc
            raise

    def start_streaming(self, request: StreamingRequest) -> StreamingHandle:
        return start_streaming_query(self, request)

    def start_stream(self, work: StreamWork) -> RestartingStream:
        """The port's streaming job: the service's source and checkpoints, restarted from its
        checkpoint when the session under it is rebuilt."""
        if self.streams is None:
            raise RuntimeError("this engine has no stream source configured")
        checkpoint = self.streams.checkpoint_root / work.tenant_id / work.job_id
        checkpoint.mkdir(parents=True, exist_ok=True)
        request = StreamingRequest(
            work.job_id,
            work.tenant_id,
            work.spec,
            self.streams.kafka_options,
            self.streams.topic,
            work.trigger_seconds,
            str(checkpoint),
            dimension_refresh_seconds=self.streams.dimension_refresh_seconds,
            event_limits=self.streams.event_limits,
            on_batch=work.on_batch,
            on_entities_changed=self.on_entities_changed,
        )
        return RestartingStream(self, request)
