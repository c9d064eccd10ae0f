"""The Spark side of enrichment: reads, as-of joins, derived fields, aggregates, writes.

One long-lived SparkSession per enrich process (see docs/enrich.md for why): each job runs
its actions under its own job group (cancel = ``cancelJobGroup``) and FAIR scheduler pool,
so a long backfill does not starve a streaming query's micro-batches.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from eventpipe.core import schema
from eventpipe.core.validation import EventLimits
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from enrich.adapters import bigtable_io
from enrich.adapters.bigtable_io import BigtableTarget, ProfileInput
from enrich.adapters.spark_expressions import (
    ValueColumns,
    compile_expression,
    null_double,
)
from enrich.domain.spec import CheckedSpec
from enrich.domain.work import Cancelled, Counters

log = logging.getLogger(__name__)

_MAPS = [
    ("s", T.StringType()),
    ("i", T.LongType()),
    ("d", T.DoubleType()),
    ("b", T.BooleanType()),
    ("t", T.LongType()),
]
EVENT_SCHEMA = T.StructType(
    [
        T.StructField("row_key", T.BinaryType(), False),
        T.StructField("tenant_id", T.StringType(), False),
        T.StructField("entity_id", T.StringType(), False),
        T.StructField("event_id", T.StringType(), False),
        T.StructField("event_type", T.StringType(), False),
        T.StructField("event_time", T.LongType(), False),
        T.StructField("ingest_time", T.LongType(), True),
        *[T.StructField(k, T.MapType(T.StringType(), t), True) for k, t in _MAPS],
    ]
)
DIMENSION_SCHEMA = T.StructType(
    [
        T.StructField("key", T.StringType(), False),
        T.StructField("valid_from", T.LongType(), False),
        T.StructField("deleted", T.BooleanType(), False),
        *[T.StructField(k, T.MapType(T.StringType(), t), True) for k, t in _MAPS],
    ]
)


class JobCancelled(Cancelled):
    """The job's cancellation token stopped it (the domain's Cancelled, raised by Spark)."""


class SessionBroken(RuntimeError):
    """The Spark session stopped working (driver JVM gone, SparkContext stopped, ...)."""


def tenant_pool(tenant_id: str) -> str:
    """The FAIR scheduler pool of a tenant's Spark jobs."""
    return f"tenant-{tenant_id}"


@dataclass
class _DriverCall:
    """The driver side of one job, running on a thread of its own (see run_in_driver)."""

    job_id: str
    done: threading.Event = field(default_factory=threading.Event)
    interrupt: threading.Event = field(default_factory=threading.Event)
    jvm_thread: Any = None
    result: Any = None
    error: BaseException | None = None


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"[:500]


def _call_with_timeout(fn: Callable[[], None], timeout: float, what: str) -> None:
    """Runs ``fn`` on a daemon thread; raises what it raised, or TimeoutError (a call to a
    hung JVM blocks forever, so the thread is left behind then)."""
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            fn()
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run, name=f"enrich-{what}", daemon=True)
    thread.start()
    thread.join(timeout)
    if not outcome:
        raise TimeoutError(f"{what} did not answer within {timeout:g} s")
    if outcome[0] is not None:
        raise outcome[0]


def _discard_session(session: SparkSession | None) -> None:
    """Forgets a broken session and kills its driver JVM, so build_session starts a new one.

    pyspark keeps the gateway to the JVM and the active context in class attributes; a dead
    or poisoned JVM (OutOfMemoryError) must not be reused, so the gateway is shut down too."""
    from pyspark import SparkContext

    if session is not None:
        try:
            _call_with_timeout(session.stop, 30.0, "Spark session stop")
        except Exception:
            log.info("the broken session did not stop cleanly", exc_info=True)
    SparkSession._instantiatedSession = None
    SparkSession._activeSession = None
    with SparkContext._lock:
        SparkContext._active_spark_context = None
        gateway = SparkContext._gateway
        SparkContext._gateway = None
        SparkContext._jvm = None
    if gateway is not None:
        proc = getattr(gateway, "proc", None)
        try:
            _call_with_timeout(gateway.shutdown, 30.0, "Py4J gateway shutdown")
        except Exception:
            log.debug("gateway shutdown failed", exc_info=True)
        if proc is not None and proc.poll() is None:
            proc.kill()
            try:
                proc.wait(30)
            except Exception:
                log.warning("the old driver JVM did not exit", exc_info=True)


@dataclass(frozen=True)
class SparkSettings:
    master: str = "local[*]"
    app_name: str = "eventpipe-enrich"
    partitions: int = 8
    broadcast_max_rows: int = 100_000
    shuffle_partitions: int = 8
    jars: tuple[str, ...] = ()
    extra_conf: tuple[tuple[str, str], ...] = ()


class CancelFlag(Protocol):
    """A job's cancellation token (enrich.domain.work.CancellationToken, or an Event)."""

    def is_set(self) -> bool: ...


@dataclass
class BatchRequest:
    job_id: str
    tenant_id: str
    spec: CheckedSpec
    start_micros: int
    end_micros: int
    cancelled: CancelFlag = field(default_factory=threading.Event)
    on_progress: Callable[[float, Counters], None] = lambda _p, _c: None
    on_entities_changed: Callable[[list[tuple[str, str]]], None] = lambda _e: None


def build_session(settings: SparkSettings) -> SparkSession:
    # Local workers must run this interpreter (the venv with the enrich package), not whatever
    # `python3` is first on PATH; pyspark reads only the environment variable for this.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = (
        SparkSession.builder.master(settings.master)
        .appName(settings.app_name)
        .config("spark.scheduler.mode", "FAIR")
        .config("spark.sql.shuffle.partitions", str(settings.shuffle_partitions))
        .config("spark.ui.enabled", "false")
        .config("spark.sql.adaptive.enabled", "true")
        # Columns are built by code, never parsed from clients; the broadcast decision is ours.
        .config("spark.sql.autoBroadcastJoinThreshold", "-1")
    )
    if settings.jars:
        builder = builder.config("spark.jars", ",".join(settings.jars))
    for key, value in settings.extra_conf:
        builder = builder.config(key, value)
    return builder.getOrCreate()


# ---------------------------------------------------------------- frames


def numeric_view(maps_prefix: str, name: str) -> Column:
    return F.coalesce(F.col(f"{maps_prefix}d")[name], F.col(f"{maps_prefix}i")[name].cast("double"))


def join_key_column(key_attribute: str | None) -> Column:
    if key_attribute is None:
        return F.col("entity_id")
    return F.coalesce(F.col("s")[key_attribute], F.col("i")[key_attribute].cast("string"))


def _key_in(names: list[str]) -> Callable[[Column, Column], Column]:
    """A map_filter predicate keeping the listed keys (pyspark counts lambda parameters)."""

    def keep(key: Column, _value: Column) -> Column:
        return key.isin(names)

    return keep


def versioned(dimension: DataFrame) -> DataFrame:
    """Adds valid_to: the next version's valid_from (null for the current version)."""
    by_key = Window.partitionBy("key").orderBy("valid_from")
    return dimension.withColumn("valid_to", F.lead("valid_from").over(by_key))


def prepared_dimension(dimension: DataFrame, n: int, fields: list[str]) -> DataFrame:
    """The versions of one dimension as join n reads them: key, valid_from, valid_to (the next
    version's valid_from, null for the current one), deleted, and maps of the copied fields,
    every column prefixed j{n}_. Computed once per job (streaming: per dimension refresh)."""
    return versioned(dimension).select(
        F.col("key").alias(f"j{n}_key"),
        F.col("valid_from").alias(f"j{n}_from"),
        F.col("valid_to").alias(f"j{n}_to"),
        F.col("deleted").alias(f"j{n}_deleted"),
        *[F.map_filter(F.col(kind), _key_in(fields)).alias(f"j{n}_{kind}") for kind, _ in _MAPS],
    )


def enrich_frame(
    events: DataFrame,
    dimensions: dict[str, DataFrame],
    spec: CheckedSpec,
    broadcast: dict[str, bool],
) -> DataFrame:
    """Adds per join n: j{n}_m (matched) and j{n}_s.. maps of the copied fields, as of the
    event's time; and per derived field k: dv{k}_n / dv{k}_s (number / text) and dv{k}_x
    (true where the result was nulled because it was not a finite number).

    ``dimensions`` maps each joined dimension to its prepared_dimension frame."""
    frame = events
    for n, join in enumerate(spec.joins):
        dim = dimensions[join.dimension]
        if broadcast.get(join.dimension):
            dim = F.broadcast(dim)
        condition = (
            (join_key_column(join.key_attribute) == F.col(f"j{n}_key"))
            & (F.col(f"j{n}_from") <= F.col("event_time"))
            & (F.col(f"j{n}_to").isNull() | (F.col("event_time") < F.col(f"j{n}_to")))
        )
        frame = frame.join(dim, condition, "left")
        matched = F.col(f"j{n}_key").isNotNull() & ~F.coalesce(F.col(f"j{n}_deleted"), F.lit(False))
        frame = frame.withColumn(f"j{n}_m", matched)
        for kind, _ in _MAPS:
            frame = frame.withColumn(f"j{n}_{kind}", F.when(matched, F.col(f"j{n}_{kind}")))
        frame = frame.drop(f"j{n}_key", f"j{n}_from", f"j{n}_to", f"j{n}_deleted")

    join_index = {j.dimension: n for n, j in enumerate(spec.joins)}
    derived_index: dict[str, int] = {}

    def resolve(name: str) -> ValueColumns:
        if name in ("entity_id", "event_type"):
            return ValueColumns(null_double(), F.col(name))
        if name in derived_index:
            k = derived_index[name]
            return ValueColumns(F.col(f"dv{k}_n"), F.col(f"dv{k}_s"))
        if "." in name:
            dimension, dim_field = name.split(".", 1)
            prefix = f"j{join_index[dimension]}_"
            return ValueColumns(numeric_view(prefix, dim_field), F.col(f"{prefix}s")[dim_field])
        return ValueColumns(numeric_view("", name), F.col("s")[name])

    for k, derived in enumerate(spec.derived):
        value = compile_expression(derived.ast, resolve)
        frame = (
            frame.withColumn(f"dv{k}_n", value.number)
            .withColumn(f"dv{k}_s", value.text)
            .withColumn(f"dv{k}_x", value.non_finite)
        )
        derived_index[derived.name] = k

    for m, name in enumerate(spec.metric_fields):
        frame = frame.withColumn(f"mf{m}", resolve(name).number)
    return frame


def map_items(value: Any) -> Iterable[tuple[str, Any]]:
    """The entries of a map column: a dict from a Spark Row, a list of pairs from Arrow."""
    if not value:
        return ()
    return value.items() if isinstance(value, dict) else value  # type: ignore[no-any-return]


def arrow_rows(batches: Iterable[Any]) -> Iterator[dict[str, Any]]:
    """The rows of mapInArrow's record batches as dicts (much cheaper than pickled Rows)."""
    for batch in batches:
        yield from batch.to_pylist()


ARROW_BATCH_ROWS = 10_000


def arrow_batches(
    rows: Iterable[tuple[Any, ...]], spark_schema: T.StructType, size: int = ARROW_BATCH_ROWS
) -> Iterator[Any]:
    """Tuples in the column order of ``spark_schema`` as Arrow record batches (map columns
    from dicts), for mapInArrow: far cheaper for Spark to take than pickled rows."""
    import pyarrow as pa
    from pyspark.sql.pandas.types import to_arrow_schema

    arrow_schema = to_arrow_schema(spark_schema)
    chunk: list[tuple[Any, ...]] = []

    def batch() -> Any:
        columns = list(zip(*chunk, strict=True))
        return pa.RecordBatch.from_arrays(
            [pa.array(c, type=f.type) for c, f in zip(columns, arrow_schema, strict=True)],
            schema=arrow_schema,
        )

    for row in rows:
        chunk.append(row)
        if len(chunk) >= size:
            yield batch()
            chunk = []
    if chunk:
        yield batch()


def joined_fields(
    values: dict[str, Any], spec: CheckedSpec
) -> tuple[dict[tuple[str, str], Any], list[str]]:
    """The copied dimension fields ((kind, "dimension.field") -> value) of one enrich_frame
    row (or of the newest-event struct), and the dimensions that did not match."""
    joined: dict[tuple[str, str], Any] = {}
    unmatched: list[str] = []
    for n, join in enumerate(spec.joins):
        if not values[f"j{n}_m"]:
            unmatched.append(join.dimension)
            continue
        for kind, _ in _MAPS:
            for name, value in map_items(values[f"j{n}_{kind}"]):
                if value is not None:
                    joined[(kind, f"{join.dimension}.{name}")] = value
    return joined, unmatched


NON_FINITE_COLUMNS = tuple(f"non_finite_{where}" for where in bigtable_io.NON_FINITE_WHERE)
NON_FINITE_DDL = ", ".join(f"{column} long" for column in NON_FINITE_COLUMNS)
"""The columns a write task adds to its one result row: its tally of non-finite values."""


def task_non_finite_columns() -> dict[str, list[int]]:
    """This task's tally (taken and reset, see bigtable_io) as one-row result columns."""
    counts = bigtable_io.take_non_finite_counts()
    return {
        column: [counts.get(where, 0)]
        for column, where in zip(NON_FINITE_COLUMNS, bigtable_io.NON_FINITE_WHERE, strict=True)
    }


def count_tasks_non_finite(results: Iterable[Any]) -> None:
    """Adds the tallies the tasks returned (rows with NON_FINITE_COLUMNS) to the driver's
    ``eventpipe_enrich_non_finite_values_total``: the tasks ran in other processes."""
    totals = dict.fromkeys(bigtable_io.NON_FINITE_WHERE, 0)
    for row in results:
        for column, where in zip(NON_FINITE_COLUMNS, bigtable_io.NON_FINITE_WHERE, strict=True):
            totals[where] += int(row[column] or 0)
    bigtable_io.count_non_finite(totals)


def output_record(row: dict[str, Any], spec: CheckedSpec) -> dict[str, Any]:
    """A row of enrich_frame (as Arrow's to_pylist gives it) as the dict
    bigtable_io.enriched_row writes; ``joined`` holds the copied dimension fields alone (what
    an entity profile keeps)."""
    values = dict(row)
    for kind, _ in _MAPS:
        values[kind] = dict(map_items(values[kind]))
    joined, unmatched = joined_fields(values, spec)
    enriched = dict(joined)
    for k, derived in enumerate(spec.derived):
        number, text = values[f"dv{k}_n"], values[f"dv{k}_s"]
        if number is not None:
            enriched[("d", derived.name)] = number
        elif text is not None:
            enriched[("s", derived.name)] = text
        elif values.get(f"dv{k}_x"):
            bigtable_io.note_non_finite(bigtable_io.DERIVED_FIELD)
    values["joined"] = joined
    values["enriched"] = enriched
    values["unmatched"] = unmatched
    return values


def aggregate_frame(frame: DataFrame, spec: CheckedSpec) -> DataFrame:
    """Per entity and hour / day bucket: event types seen, first/last seen, field stats."""
    frames = []
    for granularity, size in bigtable_io.GRANULARITIES.items():
        bucketed = frame.withColumn(
            "bucket", F.floor(F.col("event_time") / F.lit(size)).cast("long") * F.lit(size)
        )
        stats: list[Column] = []
        for m in range(len(spec.metric_fields)):
            value = F.col(f"mf{m}")
            stats += [
                F.sum(value).alias(f"mf{m}_sum"),
                F.min(value).alias(f"mf{m}_min"),
                F.max(value).alias(f"mf{m}_max"),
                F.count(value).alias(f"mf{m}_count"),
            ]
        frames.append(
            bucketed.groupBy("tenant_id", "entity_id", "bucket")
            .agg(
                F.collect_list("event_type").alias("types"),
                F.min("event_time").alias("first_seen"),
                F.max("event_time").alias("last_seen"),
                *stats,
            )
            .withColumn("granularity", F.lit(granularity))
        )
    return frames[0].unionByName(frames[1])


def _bucket_aggregate(row: Any, metric_fields: tuple[str, ...]) -> bigtable_io.BucketAggregate:
    from collections import Counter

    values = {}
    for m, name in enumerate(metric_fields):
        count = row[f"mf{m}_count"]
        if count:
            values[name] = (
                float(row[f"mf{m}_sum"]),
                float(row[f"mf{m}_min"]),
                float(row[f"mf{m}_max"]),
                int(count),
            )
    return bigtable_io.BucketAggregate(
        row["tenant_id"],
        row["entity_id"],
        row["granularity"],
        int(row["bucket"]),
        dict(Counter(row["types"])),
        values,
        int(row["first_seen"]),
        int(row["last_seen"]),
    )


# ---------------------------------------------------------------- the engine


class SparkEngine:
    """Runs batch and streaming enrichments on one shared SparkSession."""

    def __init__(
        self,
        settings: SparkSettings,
        target: BigtableTarget,
        run_dir: Path | None = None,
        session: SparkSession | None = None,
        *,
        cancel_grace_seconds: float = 5.0,
        probe_timeout_seconds: float = 60.0,
    ) -> None:
        self.settings = settings
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
        self._calls: dict[str, _DriverCall] = {}

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

        _call_with_timeout(probe, self.probe_timeout_seconds, "Spark session probe")

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
            self._rebuild(generation, _first_line(exc))

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
            self._rebuild(generation, _first_line(exc))
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
            _discard_session(old)
            try:
                session = build_session(self.settings)
                self._probe(session, run_job=True)
            except Exception as exc:
                self._broken = f"the Spark session broke ({cause}) and could not be rebuilt: " + (
                    _first_line(exc)
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
        call = _DriverCall(job_id)
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

    def _interrupt(self, call: _DriverCall) -> None:
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
            target, schema.RAW_EVENTS_TABLE, bigtable_io.tenant_event_ranges(tenant_id)
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

    def run_batch(self, request: BatchRequest) -> Counters:
        """Runs a batch job; a broken session is rebuilt before it, or after it failed
        (then it raises SessionBroken: this job failed with the session, the next one runs on
        the new session)."""
        self.ensure_session()
        generation = self._generation
        try:
            return self.run_in_driver(  # type: ignore[no-any-return]
                request.job_id, request.cancelled, lambda: self._batch_in_driver(request)
            )
        except JobCancelled:
            raise
        except Exception as exc:
            if self.recover(generation):
                raise SessionBroken(
                    "the Spark session broke while this job ran and was rebuilt: "
                    + _first_line(exc)
                ) from exc
            raise

    def _batch_in_driver(self, request: BatchRequest) -> Counters:
        spark = self.spark
        sc = spark.sparkContext
        sc.setJobGroup(request.job_id, f"enrich {request.tenant_id}", interruptOnCancel=True)
        # One FAIR pool per tenant: tenants share the executors equally, whatever their count
        # of jobs and streams.
        sc.setLocalProperty("spark.scheduler.pool", tenant_pool(request.tenant_id))
        counters = Counters()
        cached: list[DataFrame] = []
        try:
            return self._run_batch(request, counters, cached)
        finally:
            for frame in cached:
                try:
                    frame.unpersist()
                except Exception:  # a cancelled or broken session
                    log.debug("could not unpersist", exc_info=True)
            sc.setLocalProperty("spark.scheduler.pool", None)  # type: ignore[arg-type]

    def start_streaming(self, request: StreamingRequest) -> StreamingHandle:
        return _start_streaming(self, request)

    def _check(self, request: BatchRequest) -> None:
        """The cancellation token, checked between steps of the driver side."""
        if request.cancelled.is_set():
            raise JobCancelled(request.job_id)

    def _run_batch(
        self, request: BatchRequest, counters: Counters, cached: list[DataFrame]
    ) -> Counters:
        spec = request.spec
        target = self.target
        # Aggregates are recomputed for whole day buckets, so read whole days.
        agg_start = request.start_micros // bigtable_io.DAY_MICROS * bigtable_io.DAY_MICROS
        agg_end = -(-request.end_micros // bigtable_io.DAY_MICROS) * bigtable_io.DAY_MICROS
        self._check(request)
        events = self.read_events(request.tenant_id, agg_start, agg_end)
        dimensions, broadcast = self.read_dimensions(request.tenant_id, spec)
        cached.extend(dimensions.values())
        request.on_progress(0.1, counters)
        self._check(request)
        frame = enrich_frame(events, dimensions, spec, broadcast).persist()
        cached.append(frame)
        in_window = frame.filter(
            (F.col("event_time") >= request.start_micros)
            & (F.col("event_time") < request.end_micros)
        )
        spec_version = spec.version

        def write_enriched(batches: Iterable[Any]) -> Iterator[Any]:
            import pyarrow as pa

            counts = {"read": 0, "unmatched": 0}
            bigtable_io.take_non_finite_counts()  # a reused worker: drop a failed task's tally

            def rows() -> Iterator[Any]:
                for values in arrow_rows(batches):
                    record = output_record(values, spec)
                    counts["read"] += 1
                    counts["unmatched"] += bool(record["unmatched"])
                    yield bigtable_io.enriched_row(record, spec_version)

            bigtable_io.write_rows(target, schema.ENRICHED_EVENTS_TABLE, rows())
            yield pa.RecordBatch.from_pydict(
                {**{k: [v] for k, v in counts.items()}, **task_non_finite_columns()}
            )

        totals = in_window.mapInArrow(
            write_enriched, f"read long, unmatched long, {NON_FINITE_DDL}"
        ).collect()
        count_tasks_non_finite(totals)
        counters.read = sum(int(t["read"]) for t in totals)
        counters.unmatched = sum(int(t["unmatched"]) for t in totals)
        counters.enriched = counters.read - counters.unmatched
        request.on_progress(0.6, counters)
        self._check(request)

        metric_fields = spec.metric_fields

        def write_metrics(batches: Iterable[Any]) -> Iterator[Any]:
            import pyarrow as pa

            bigtable_io.take_non_finite_counts()
            written = bigtable_io.write_rows(
                target,
                schema.ENTITY_METRICS_TABLE,
                (
                    bigtable_io.metric_row(_bucket_aggregate(row, metric_fields))
                    for row in arrow_rows(batches)
                ),
            )
            yield pa.RecordBatch.from_pydict({"written": [written], **task_non_finite_columns()})

        count_tasks_non_finite(
            aggregate_frame(frame, spec)
            .mapInArrow(write_metrics, f"written long, {NON_FINITE_DDL}")
            .collect()
        )
        request.on_progress(0.8, counters)
        self._check(request)

        changed = self._write_profiles(in_window, spec)
        request.on_entities_changed(changed)
        request.on_progress(1.0, counters)
        return counters

    def _write_profiles(self, in_window: DataFrame, spec: CheckedSpec) -> list[tuple[str, str]]:
        """Refreshes the profile of every entity with an event in the window."""
        target = self.target
        join_columns = [
            F.col(f"j{n}_{kind}") for n in range(len(spec.joins)) for kind, _ in _MAPS
        ] + [F.col(f"j{n}_m") for n in range(len(spec.joins))]
        newest = in_window.groupBy("tenant_id", "entity_id").agg(
            F.max_by(
                F.struct(F.col("event_time"), *join_columns),
                F.struct(F.col("event_time"), F.col("event_id")),
            ).alias("newest")
        )
        update_time = time.time_ns() // 1000

        def refresh(rows: Iterable[Any]) -> Iterator[tuple[str, str, int]]:
            bigtable_io.take_non_finite_counts()
            inputs = []
            for row in rows:
                newest_values = row["newest"].asDict()
                fields, _unmatched = joined_fields(newest_values, spec)
                inputs.append(
                    ProfileInput(
                        row["tenant_id"], row["entity_id"], newest_values["event_time"], fields
                    )
                )
            for tenant_id, entity_id in _refresh_profiles(target, inputs, update_time):
                yield tenant_id, entity_id, 0
            # The tally rides along as ("", where, count) rows: no tenant id is empty.
            for where, count in bigtable_io.take_non_finite_counts().items():
                yield "", where, count

        results = newest.rdd.mapPartitions(refresh).collect()
        non_finite: Counter[str] = Counter()
        for tenant_id, name, count in results:
            if not tenant_id:
                non_finite[name] += count
        bigtable_io.count_non_finite(non_finite)
        return [(tenant_id, entity_id) for tenant_id, entity_id, _ in results if tenant_id]


def _refresh_profiles(
    target: BigtableTarget, inputs: list[ProfileInput], update_time: int
) -> Iterator[tuple[str, str]]:
    for start in range(0, len(inputs), bigtable_io.MUTATION_BATCH):
        yield from bigtable_io.refresh_profiles(
            target, inputs[start : start + bigtable_io.MUTATION_BATCH], update_time
        )


def write_micro_batch(
    rows: Iterable[dict[str, Any]], target: BigtableTarget, spec: CheckedSpec
) -> Iterator[dict[str, Any]]:
    """Everything one micro-batch partition writes, in one pass: its enriched rows, then the
    hour/day buckets they touch (recomputed from the stored enriched rows, so a re-delivered
    event is not counted twice), then the touched entities' profiles.

    Every event of an entity must be in this partition (_by_entity sees to it), or
    two tasks could recompute one bucket from different states. Yields result rows: kind
    "read" and "unmatched" with n, kind "entity" per profile written, and kind "non_finite"
    with ``where`` and n: the task's tally of non-finite values (bigtable_io).
    """
    bigtable_io.take_non_finite_counts()  # a reused worker: drop a failed task's tally
    records = [output_record(row, spec) for row in rows]
    if not records:
        return
    bigtable_io.write_rows(
        target,
        schema.ENRICHED_EVENTS_TABLE,
        (bigtable_io.enriched_row(record, spec.version) for record in records),
    )
    days = sorted(
        {
            (r["tenant_id"], r["entity_id"], r["event_time"] // bigtable_io.DAY_MICROS)
            for r in records
        }
    )
    bigtable_io.write_rows(
        target,
        schema.ENTITY_METRICS_TABLE,
        (
            bigtable_io.metric_row(aggregate)
            for tenant_id, entity_id, day in days
            for aggregate in bigtable_io.aggregates_from_enriched(
                target, tenant_id, entity_id, day * bigtable_io.DAY_MICROS, spec.metric_fields
            )
        ),
    )
    newest: dict[tuple[str, str], dict[str, Any]] = {}
    for record in records:
        entity = (record["tenant_id"], record["entity_id"])
        current = newest.get(entity)
        if current is None or (record["event_time"], record["event_id"]) > (
            current["event_time"],
            current["event_id"],
        ):
            newest[entity] = record
    inputs = [
        ProfileInput(tenant_id, entity_id, record["event_time"], record["joined"])
        for (tenant_id, entity_id), record in sorted(newest.items())
    ]
    yield {"kind": "read", "n": len(records)}
    yield {"kind": "unmatched", "n": sum(1 for record in records if record["unmatched"])}
    for tenant_id, entity_id in _refresh_profiles(target, inputs, time.time_ns() // 1000):
        yield {"kind": "entity", "tenant_id": tenant_id, "entity_id": entity_id}
    for where, count in bigtable_io.take_non_finite_counts().items():
        yield {"kind": "non_finite", "where": where, "n": count}


MICRO_BATCH_RESULT = T.StructType(
    [
        T.StructField("kind", T.StringType()),
        T.StructField("n", T.LongType()),
        T.StructField("tenant_id", T.StringType()),
        T.StructField("entity_id", T.StringType()),
        T.StructField("where", T.StringType()),
    ]
)
"""The rows write_micro_batch yields, as the schema of its mapInArrow."""


# ---------------------------------------------------------------- streaming


def event_tuple(event: Any) -> tuple[Any, ...]:
    """A decoded raw-topic Event as an EVENT_SCHEMA row."""
    maps: dict[str, dict[str, Any]] = {k: {} for k, _ in _MAPS}
    for name, attribute in event.attributes.items():
        kind = attribute.WhichOneof("kind")
        if kind == "string_value":
            maps["s"][name] = attribute.string_value
        elif kind == "int_value":
            maps["i"][name] = attribute.int_value
        elif kind == "double_value":
            maps["d"][name] = attribute.double_value
        elif kind == "bool_value":
            maps["b"][name] = attribute.bool_value
        elif kind == "timestamp_value":
            maps["t"][name] = schema.micros(attribute.timestamp_value)
    event_time = schema.micros(event.event_time)
    return (
        schema.row_key_for_event(event.tenant_id, event.entity_id, event_time, event.event_id),
        event.tenant_id,
        event.entity_id,
        event.event_id,
        event.event_type,
        event_time,
        schema.micros(event.ingest_time),
        *(maps[k] for k, _ in _MAPS),
    )


def tenant_events(
    rows: Iterable[Any], tenant_id: str, limits: EventLimits, poison: Any
) -> Iterator[tuple[Any, ...]]:
    """The events of ``tenant_id`` among raw-topic rows of the Kafka source (key, value,
    headers, timestamp_ms), decoded by the store consumer's own ``decode_raw_event``: a message
    the store dead-letters is never enriched. Poison messages that name this tenant (key prefix
    or tenant header) are skipped and counted in the ``poison`` accumulator; other tenants'
    are skipped silently (their counts are not this tenant's business)."""
    from eventpipe.core.topic_contract import HEADER_TENANT, PoisonMessage, decode_raw_event

    key_prefix = f"{tenant_id}#".encode()
    tenant_header = tenant_id.encode()
    for row in rows:
        key = None if row["key"] is None else bytes(row["key"])
        headers = [
            (h["key"], b"" if h["value"] is None else bytes(h["value"]))
            for h in (row["headers"] or ())
        ]
        try:
            event = decode_raw_event(
                key,
                None if row["value"] is None else bytes(row["value"]),
                headers,
                row["timestamp_ms"],
                limits,
                time.time_ns() // 1000,
            )
        except PoisonMessage:
            if (key or b"").startswith(key_prefix) or (HEADER_TENANT, tenant_header) in headers:
                poison.add(1)
            continue
        if event.tenant_id == tenant_id:
            yield event_tuple(event)


@dataclass
class StreamingRequest:
    job_id: str
    tenant_id: str
    spec: CheckedSpec
    bootstrap_servers: str
    topic: str
    trigger_seconds: float
    checkpoint_dir: str
    dimension_refresh_seconds: float = 30.0
    max_events_per_batch: int = 200_000
    event_limits: EventLimits = field(default_factory=EventLimits)
    on_batch: Callable[[Counters], None] = lambda _c: None
    on_entities_changed: Callable[[list[tuple[str, str]]], None] = lambda _e: None


class StreamingHandle:
    """A running streaming query: ``stop()`` ends it, ``error()`` tells why it died."""

    def __init__(self, query: Any) -> None:
        self.query = query

    def started(self) -> bool:
        """True once the first micro-batch ran, so the source's start offsets are fixed."""
        return self.query.lastProgress is not None

    def is_active(self) -> bool:
        try:
            return bool(self.query.isActive)
        except Exception:  # the session under it broke
            return False

    def error(self) -> str | None:
        try:
            exc = self.query.exception()
        except Exception as broken:
            return _first_line(broken)
        return None if exc is None else str(exc).splitlines()[0]

    def stop(self) -> None:
        try:
            self.query.stop()
        except Exception:
            log.info("stopping a stream on a broken session failed", exc_info=True)


SINGLE_TASK_MAX_EVENTS = 5_000
"""Micro-batches up to this size run in one task: no shuffle, the lowest latency."""


def _by_entity(frame: DataFrame, query: Any, max_partitions: int = 64) -> DataFrame:
    """Puts every event of an entity in one partition: a small micro-batch in one task
    (coalesce, no shuffle), a large one hash-partitioned by entity. The previous batch's size
    picks the way (the current one is not known without reading it twice); both are correct,
    only the speed differs."""
    progress = query.lastProgress if query is not None else None
    rows = int(progress["numInputRows"]) if progress else 0
    if rows <= SINGLE_TASK_MAX_EVENTS:
        return frame.coalesce(1)
    partitions = min(max_partitions, -(-rows // SINGLE_TASK_MAX_EVENTS))
    return frame.repartition(partitions, "tenant_id", "entity_id")


def _start_streaming(engine: SparkEngine, request: StreamingRequest) -> StreamingHandle:
    spark = engine.spark
    target = engine.target
    spec = request.spec
    tenant_id = request.tenant_id
    state: dict[str, Any] = {"dims": None, "loaded_at": 0.0}

    def dimensions() -> tuple[dict[str, DataFrame], dict[str, bool]]:
        now = time.monotonic()
        if state["dims"] is None or now - state["loaded_at"] > request.dimension_refresh_seconds:
            if state["dims"] is not None:
                for frame in state["dims"][0].values():
                    frame.unpersist()
            state["dims"] = engine.read_dimensions(tenant_id, spec)
            state["loaded_at"] = now
        return state["dims"]  # type: ignore[no-any-return]

    def process(batch: DataFrame, _batch_id: int) -> None:
        sc = spark.sparkContext
        sc.setJobGroup(request.job_id, f"stream {tenant_id}", interruptOnCancel=True)
        sc.setLocalProperty("spark.scheduler.pool", tenant_pool(tenant_id))

        poison = sc.accumulator(0)
        limits = request.event_limits

        def decode(rows: Iterable[Any]) -> Iterator[tuple[Any, ...]]:
            return tenant_events(rows, tenant_id, limits, poison)

        raw = batch.select(
            "key", "value", "headers", F.unix_millis("timestamp").alias("timestamp_ms")
        )
        events = spark.createDataFrame(raw.rdd.mapPartitions(decode), EVENT_SCHEMA)
        dims, broadcast = dimensions()
        # One Spark job per micro-batch: the joins, then the writes (see write_micro_batch)
        # with each entity's events in one task.
        frame = _by_entity(
            enrich_frame(events, dims, spec, broadcast),
            state.get("query"),
            engine.settings.shuffle_partitions,
        )

        def write(batches: Iterable[Any]) -> Iterator[Any]:
            import pyarrow as pa
            from pyspark.sql.pandas.types import to_arrow_schema

            results = list(write_micro_batch(arrow_rows(batches), target, spec))
            yield pa.RecordBatch.from_pylist(results, schema=to_arrow_schema(MICRO_BATCH_RESULT))

        results = frame.mapInArrow(write, MICRO_BATCH_RESULT).collect()
        non_finite: Counter[str] = Counter()
        for r in results:
            if r["kind"] == "non_finite":
                non_finite[r["where"]] += r["n"]
        bigtable_io.count_non_finite(non_finite)
        read = sum(r["n"] for r in results if r["kind"] == "read")
        skipped = int(poison.value)
        if skipped:
            log.warning(
                "skipped raw-topic messages that break the topic contract",
                extra={"job_id": request.job_id, "poison_messages": skipped},
            )
        if not read:
            if skipped:
                request.on_batch(Counters(0, 0, 0, skipped))
            return
        unmatched = sum(r["n"] for r in results if r["kind"] == "unmatched")
        request.on_entities_changed(
            [(r["tenant_id"], r["entity_id"]) for r in results if r["kind"] == "entity"]
        )
        request.on_batch(Counters(read, read - unmatched, unmatched, skipped))

    query: Any = (
        spark.readStream.format("kafka")
        .option("kafka.bootstrap.servers", request.bootstrap_servers)
        .option("subscribe", request.topic)
        .option("includeHeaders", "true")  # decode_raw_event checks them
        .option("startingOffsets", "latest")
        .option("failOnDataLoss", "false")
        # A task reads a fixed offset range; the broker's default 500 ms fetch wait on each
        # partition's last fetch was most of a small micro-batch's time.
        .option("kafka.fetch.max.wait.ms", "20")
        # Bounds a micro-batch after a pause or backlog, so one batch cannot exhaust memory.
        .option("maxOffsetsPerTrigger", str(request.max_events_per_batch))
        .load()
        .writeStream.queryName(f"enrich-{request.job_id}")
        .option("checkpointLocation", request.checkpoint_dir)
        .trigger(processingTime=f"{int(request.trigger_seconds * 1000)} milliseconds")
        .foreachBatch(process)
        .start()
    )
    state["query"] = query
    return StreamingHandle(query)
