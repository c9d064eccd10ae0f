"""The consumer daemon: raw topic -> Bigtable, at-least-once writes of idempotent rows.

One loop thread owns the Kafka consumer. It consumes a batch, decodes and validates it, and
hands the rows to a writer thread, so the next batch is decoded while the previous one is in
``mutate_rows``. A batch's offsets are committed only after all its rows are confirmed by
Bigtable and all its dead letters by Kafka. Row keys contain the event_id and the cell
timestamp is the event time, so writing a row twice (after a crash, a rebalance, a retry)
rewrites the same cells: at-least-once delivery gives exactly-once rows. A re-sent event id
(another message, whatever its event time) is dropped by the idempotency index
(``store.consumer.idempotency``).

Bigtable down: the failed rows are retried with capped exponential backoff, every assigned
partition is paused (the loop keeps polling, so the member stays in the group, but fetches
stop and memory stays at one batch in flight plus one prepared), nothing is committed, and
consumption resumes once the rows are written. A table that vanished is recreated first.

Stopping (SIGTERM): the loop stops consuming, finishes the batch in flight, commits, and
closes the consumer (leaving the group). If Bigtable stays down past the grace period the
batch is abandoned uncommitted: the next owner replays it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Protocol

from confluent_kafka import KafkaException, TopicPartition
from eventpipe.core import tracing
from eventpipe.core.dead_letter_reasons import reason_class
from eventpipe.core.kafka import message_headers
from eventpipe.core.storage.attributes import decode_int
from eventpipe.core.storage.rows import EventRow
from eventpipe.core.storage.tables import META_FAMILY
from eventpipe.core.validation import EventLimits
from opentelemetry import trace

from store.consumer import metrics
from store.consumer.backoff import Backoff
from store.consumer.batch import (
    DeadLetter,
    PreparedBatch,
    dead_letter_for,
    prepare_batch,
    source_of,
)
from store.consumer.erasures import delete_erased_rows, erased_positions
from store.consumer.idempotency import code_of, store_once
from store.consumer.status import ConsumerState, ConsumerStatus, PartitionPosition
from store.ports import KeyReader, RowFailure, RowWriter

log = logging.getLogger(__name__)

# A row Bigtable refuses with a non-retryable code this many times is dead-lettered, so one
# row Bigtable will never take cannot block its partition.
PERMANENT_FAILURE_ATTEMPTS = 3
OFFSET_UNKNOWN = -1001  # librdkafka's OFFSET_INVALID: nothing committed yet
MAX_SPAN_LINKS = 128  # a batch's span links at most this many of its messages' traces


class KafkaConsumerLike(Protocol):
    """The part of ``confluent_kafka.Consumer`` the daemon uses (fakes implement it too)."""

    def subscribe(self, topics: list[str], **callbacks: Any) -> None: ...
    def consume(self, num_messages: int, timeout: float) -> list[Any]: ...
    def pause(self, partitions: list[TopicPartition]) -> None: ...
    def resume(self, partitions: list[TopicPartition]) -> None: ...
    def assignment(self) -> list[TopicPartition]: ...
    def commit(self, *, offsets: list[TopicPartition], asynchronous: bool) -> Any: ...
    def committed(self, partitions: list[TopicPartition], timeout: float) -> list[Any]: ...
    def get_watermark_offsets(
        self, partition: TopicPartition, timeout: float, cached: bool
    ) -> tuple[int, int] | None: ...
    def close(self) -> None: ...


class DeadLetterSink(Protocol):
    def send(self, letters: Sequence[DeadLetter], timeout: float) -> None:
        """Raises unless every letter is durably written."""
        ...


class StopRequested(Exception):
    """The stop deadline passed while a batch could not be finished."""


class ConsumerDaemon:
    """A ``BackgroundWorker`` (eventpipe.core.server) running the consume-write-commit loop."""

    def __init__(
        self,
        *,
        topic: str,
        consumer_factory: Callable[[], KafkaConsumerLike],
        writer: RowWriter,
        index_reader: KeyReader,
        dead_letters: DeadLetterSink,
        limits: EventLimits,
        backoff: Backoff,
        batch_max_messages: int = 1000,
        batch_max_wait: float = 0.05,
        status_interval: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._topic = topic
        self._consumer_factory = consumer_factory
        self._writer = writer
        self._index_reader = index_reader
        self._dead_letters = dead_letters
        self._limits = limits
        self._backoff = backoff
        self._batch_max = batch_max_messages
        self._batch_wait = batch_max_wait
        self._status_interval = status_interval
        self._clock = clock

        self._stop = threading.Event()
        self._stop_deadline = float("inf")
        self._thread: threading.Thread | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-writer")
        self._lock = threading.Lock()
        self._state = ConsumerState.STOPPED
        self._assigned: set[tuple[str, int]] = set()
        self._committed: dict[tuple[str, int], int] = {}
        self._high: dict[tuple[str, int], int] = {}
        self._low: dict[tuple[str, int], int] = {}
        self._needs_committed: set[tuple[str, int]] = set()
        self._rows_written = 0
        self._dead_lettered = 0
        self._last_error = ""
        self._carry: list[Any] = []
        self._paused = False
        self._next_status = 0.0
        self.failed: BaseException | None = None

    # ------------------------------------------------------------ BackgroundWorker

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run_logged, name="store-consumer")
        self._thread.start()

    def stop(self, timeout: float) -> None:
        self._stop_deadline = time.monotonic() + timeout
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout + 10)

    def request_stop(self, timeout: float) -> None:
        """Asks the loop to finish (from a signal handler); ``run`` then returns."""
        self._stop_deadline = time.monotonic() + timeout
        self._stop.set()

    def check_alive(self) -> None:
        """Liveness check: raises once the loop has died, so liveness turns NOT_SERVING
        (and readiness, with this reason)."""
        if self.failed is not None:
            raise RuntimeError(f"consumer loop failed: {self.failed!r}")

    def status(self) -> ConsumerStatus:
        with self._lock:
            positions = [
                PartitionPosition(
                    topic,
                    partition,
                    self._committed.get((topic, partition), self._low.get((topic, partition), 0)),
                    self._high.get((topic, partition), 0),
                )
                for topic, partition in sorted(self._assigned)
                # Listed once both offsets are known: an unknown watermark is not "no lag".
                if (topic, partition) in self._high
                and (topic, partition) not in self._needs_committed
            ]
            return ConsumerStatus(
                state=self._state,
                partitions=positions,
                rows_written=self._rows_written,
                dead_lettered=self._dead_lettered,
                last_error=self._last_error,
            )

    # ------------------------------------------------------------ the loop

    def _run_logged(self) -> None:
        try:
            self.run()
        except BaseException as exc:
            # Content never gets here (prepare_batch dead-letters whatever a message
            # provokes): this is a bug or a fault the loop cannot handle. Liveness turns
            # NOT_SERVING (check_alive) so the pod is restarted; status and readiness say why.
            self.failed = exc
            self._note_error(f"consumer loop failed: {exc!r}")
            log.exception("consumer loop failed")
            raise

    def run(self) -> None:
        """Consumes until stopped; returns after the consumer has left the group."""
        consumer = self._consumer_factory()
        consumer.subscribe(
            [self._topic],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_revoke,
        )
        self._set_state(ConsumerState.RUNNING)
        in_flight: tuple[PreparedBatch, Future[list[RowFailure]], float] | None = None
        try:
            while not self._stop.is_set():
                messages = self._next_messages(consumer)
                started = time.perf_counter()
                batch = self._prepare(messages) if messages else None
                if in_flight is not None:
                    self._complete(consumer, *in_flight)
                    in_flight = None
                if batch is not None:
                    future = self._executor.submit(self._write_batch, batch)
                    in_flight = (batch, future, started)
                self._refresh_status(consumer)
            if in_flight is not None:
                self._complete(consumer, *in_flight)
                in_flight = None
            if self._carry:
                # Consumed while paused, never written: not committed, so replayed later.
                log.info("leaving %d consumed messages uncommitted", len(self._carry))
        except StopRequested:
            log.warning("stopped with a batch unwritten; it is uncommitted and will be replayed")
        finally:
            if in_flight is not None:
                in_flight[1].cancel()
            self._executor.shutdown(wait=True, cancel_futures=True)
            try:
                consumer.close()  # leaves the group: partitions move on without waiting
            except Exception:
                log.exception("closing the consumer failed")
            self._set_state(ConsumerState.STOPPED)
            log.info("consumer stopped")

    def _next_messages(self, consumer: KafkaConsumerLike) -> list[Any]:
        if self._carry:
            messages, self._carry = self._carry, []
            return messages
        return consumer.consume(num_messages=self._batch_max, timeout=self._batch_wait)

    def _prepare(self, messages: list[Any]) -> PreparedBatch:
        return prepare_batch(messages, self._limits, int(self._clock() * 1_000_000))

    def _write_batch(self, batch: PreparedBatch) -> list[RowFailure]:
        """The first write of a batch, in one ``store.write_batch`` span (when tracing is on):
        a child of the first message's ``traceparent``, linked to the other messages' traces."""
        if not tracing.enabled():
            return self._store_rows(batch, list(range(len(batch.rows))))
        parents: list[bytes] = []
        for message in batch.row_messages:
            value = tracing.header_value(message_headers(message))
            if value and value not in parents:
                parents.append(value)
        attributes = {"messaging.batch.message_count": batch.message_count, "rows": len(batch.rows)}
        with tracing.span(
            "store.write_batch", parent=parents[0] if parents else None, attributes=attributes
        ) as span:
            if span is not None:
                for value in parents[1:MAX_SPAN_LINKS]:
                    context = tracing.parent_context(value)
                    if context is not None:
                        span.add_link(trace.get_current_span(context).get_span_context())
            failures = self._store_rows(batch, list(range(len(batch.rows))))
            if span is not None:
                span.set_attribute("rows.failed", len(failures))
            return failures

    def _store_rows(self, batch: PreparedBatch, indices: list[int]) -> list[RowFailure]:
        """Stores ``batch.rows[i]`` for ``indices`` once per event id (store.consumer.
        idempotency), never for an erased entity (store.consumer.erasures: checked before
        and after the write); failures index into ``indices``, as RowWriter.write_rows's do."""
        rows = [batch.rows[i] for i in indices]
        try:
            erased = erased_positions(self._index_reader, rows)
        except Exception as exc:
            # NOT_FOUND (a fresh emulator) makes the retry re-create the tables first.
            message = f"reading erasure tombstones: {exc}".splitlines()[0][:300]
            return [RowFailure(p, code_of(exc), message) for p in range(len(rows))]
        failures: dict[int, RowFailure] = {}
        self._drop_erased(batch, indices, rows, erased, failures)
        dropped = set(erased)
        keep = [p for p in range(len(rows)) if p not in dropped]
        outcome = store_once(
            self._writer,
            self._index_reader,
            [rows[p] for p in keep],
            [source_of(batch.row_messages[indices[p]]) for p in keep],
        )
        duplicates = {keep[p] for p in outcome.duplicates}
        batch.duplicates.update(indices[p] for p in duplicates)
        for failure in outcome.failures:
            position = keep[failure.index]
            failures[position] = RowFailure(position, failure.code, failure.message)
        written = [p for p in keep if p not in failures and p not in duplicates]
        try:
            late = erased_positions(self._index_reader, [rows[p] for p in written])
        except Exception as exc:
            # Written, but not known to be clear of a new tombstone: retried whole.
            message = f"re-reading erasure tombstones: {exc}".splitlines()[0][:300]
            failures.update({p: RowFailure(p, code_of(exc), message) for p in written})
        else:
            self._drop_erased(batch, indices, rows, [written[p] for p in late], failures)
        return sorted(failures.values(), key=lambda f: f.index)

    def _drop_erased(
        self,
        batch: PreparedBatch,
        indices: list[int],
        rows: list[EventRow],
        positions: list[int],
        failures: dict[int, RowFailure],
    ) -> None:
        """Marks rows of erased entities as dropped and deletes them (and their claims) in
        case an earlier attempt, or this one, wrote them."""
        if not positions:
            return
        batch.erased.update(indices[p] for p in positions)
        for failure in delete_erased_rows(
            self._writer, self._index_reader, [rows[p] for p in positions]
        ):
            position = positions[failure.index]
            failures[position] = RowFailure(
                position, failure.code, f"deleting an erased entity's row: {failure.message}"
            )

    def _complete(
        self,
        consumer: KafkaConsumerLike,
        batch: PreparedBatch,
        future: Future[list[RowFailure]],
        started: float,
    ) -> None:
        """Waits for the batch's rows, retrying failures; then dead letters; then commits."""
        failures = future.result()
        written = self._retry_rows(consumer, batch, failures)
        self._observe_freshness(batch, written)
        rows_written = len(written)
        self._send_dead_letters(consumer, batch.dead_letters)
        self._resume(consumer)
        self._commit(consumer, batch.next_offsets)
        with self._lock:
            self._rows_written += rows_written
            self._dead_lettered += len(batch.dead_letters)
        metrics.ROWS_WRITTEN.inc(rows_written)
        metrics.DUPLICATES.inc(len(batch.duplicates))
        metrics.ERASED.inc(len(batch.erased))
        for letter in batch.dead_letters:
            metrics.DEAD_LETTERED.labels(reason_class(letter.reason)).inc()
        metrics.BATCH_LATENCY.observe(time.perf_counter() - started)

    def _observe_freshness(self, batch: PreparedBatch, written: set[int]) -> None:
        """Ack to readable, per event whose row Bigtable just confirmed."""
        now = self._clock()
        column = (META_FAMILY, b"ingest_time")
        for index in written:
            raw = batch.rows[index].cells.get(column)
            if raw is not None:
                metrics.FRESHNESS.observe(max(0.0, now - decode_int(raw) / 1_000_000))

    def _retry_rows(
        self, consumer: KafkaConsumerLike, batch: PreparedBatch, failures: list[RowFailure]
    ) -> set[int]:
        """Retries until every row is written or dead-lettered; returns the indices (into
        ``batch.rows``) of the rows written."""
        pending = list(range(len(batch.rows)))  # indices into batch.rows of the last attempt
        permanent_attempts: dict[int, int] = {}
        attempt = 0
        dead: set[int] = set()
        while failures:
            retry: list[int] = []
            for failure in failures:
                row_index = pending[failure.index]
                if not failure.retryable:
                    permanent_attempts[row_index] = permanent_attempts.get(row_index, 0) + 1
                    if permanent_attempts[row_index] >= PERMANENT_FAILURE_ATTEMPTS:
                        reason = f"bigtable refused the row: {failure.code}: {failure.message}"
                        batch.dead_letters.append(
                            dead_letter_for(batch.row_messages[row_index], reason)
                        )
                        dead.add(row_index)
                        continue
                retry.append(row_index)
                metrics.WRITE_RETRIES.labels(failure.code).inc()
            if not retry:
                break
            attempt += 1
            first = failures[0]
            self._note_error(f"mutate_rows: {first.code}: {first.message}")
            self._pause(consumer)
            self._wait_polling(consumer, self._backoff.delay(attempt))
            if any(f.code == "NOT_FOUND" or not f.retryable for f in failures):
                try:
                    self._writer.ensure_schema()
                except Exception as exc:
                    self._note_error(f"ensure schema: {exc}")
            pending = retry
            failures = self._store_rows(batch, retry)
        if attempt:
            log.info("batch written after %d retries", attempt)
        return set(range(len(batch.rows))) - dead - batch.duplicates - batch.erased

    def _send_dead_letters(self, consumer: KafkaConsumerLike, letters: list[DeadLetter]) -> None:
        attempt = 0
        while letters:
            try:
                self._dead_letters.send(letters, timeout=10.0)
                return
            except Exception as exc:
                attempt += 1
                self._note_error(f"dead-letter topic: {exc}")
                self._pause(consumer)
                self._wait_polling(consumer, self._backoff.delay(attempt))

    def _wait_polling(self, consumer: KafkaConsumerLike, delay: float) -> None:
        """Waits ``delay`` while polling, so the member stays in its group; raises
        StopRequested once a stop was asked for and its grace period is over."""
        end = time.monotonic() + delay
        while True:
            now = time.monotonic()
            if self._stop.is_set() and now >= self._stop_deadline:
                raise StopRequested
            if now >= end:
                return
            if self._paused:
                self._pause_assignment(consumer)  # partitions assigned meanwhile pause too
            messages = consumer.consume(num_messages=self._batch_max, timeout=min(0.2, end - now))
            if messages:
                # Already fetched before the pause took effect: keep them, in order.
                self._carry.extend(messages)

    # ------------------------------------------------------------ pause / commit

    def _pause_assignment(self, consumer: KafkaConsumerLike) -> None:
        assignment = consumer.assignment()
        if assignment:
            consumer.pause(assignment)

    def _pause(self, consumer: KafkaConsumerLike) -> None:
        if not self._paused:
            log.warning("pausing consumption: %s", self._last_error)
            self._paused = True
            metrics.PAUSED.set(1)
            self._set_state(ConsumerState.PAUSED)
        self._pause_assignment(consumer)

    def _resume(self, consumer: KafkaConsumerLike) -> None:
        if not self._paused:
            return
        assignment = consumer.assignment()
        if assignment:
            consumer.resume(assignment)
        self._paused = False
        metrics.PAUSED.set(0)
        self._set_state(ConsumerState.RUNNING)
        log.info("resumed consumption")

    def _commit(
        self, consumer: KafkaConsumerLike, next_offsets: dict[tuple[str, int], int]
    ) -> None:
        with self._lock:
            owned = {tp: offset for tp, offset in next_offsets.items() if tp in self._assigned}
        if not owned:
            return  # revoked meanwhile: the new owner replays, rewriting the same rows
        offsets = [TopicPartition(t, p, o) for (t, p), o in owned.items()]
        try:
            consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            # Rows are written; an uncommitted batch is only replayed, never lost.
            self._note_error(f"commit: {exc}")
            return
        with self._lock:
            self._committed.update(owned)

    # ------------------------------------------------------------ rebalances and status

    def _on_assign(self, _consumer: Any, partitions: list[TopicPartition]) -> None:
        with self._lock:
            for tp in partitions:
                self._assigned.add((tp.topic, tp.partition))
                self._needs_committed.add((tp.topic, tp.partition))
        self._next_status = 0.0
        log.info("assigned %s", [f"{tp.topic}/{tp.partition}" for tp in partitions])

    def _on_revoke(self, _consumer: Any, partitions: list[TopicPartition]) -> None:
        with self._lock:
            for tp in partitions:
                key = (tp.topic, tp.partition)
                self._assigned.discard(key)
                self._needs_committed.discard(key)
                self._committed.pop(key, None)
                if self._high.pop(key, None) is not None:
                    metrics.CONSUMER_LAG.remove(tp.topic, str(tp.partition))
        log.info("revoked %s", [f"{tp.topic}/{tp.partition}" for tp in partitions])

    def _refresh_status(self, consumer: KafkaConsumerLike) -> None:
        now = time.monotonic()
        if now < self._next_status:
            return
        self._next_status = now + self._status_interval
        with self._lock:
            assigned = sorted(self._assigned)
            unknown = sorted(self._needs_committed & self._assigned)
        try:
            if unknown:
                for tp in consumer.committed(
                    [TopicPartition(t, p) for t, p in unknown], timeout=5.0
                ):
                    with self._lock:
                        if tp.offset >= 0:
                            self._committed.setdefault((tp.topic, tp.partition), tp.offset)
                        self._needs_committed.discard((tp.topic, tp.partition))
            for topic, partition in assigned:
                # Cached (no broker call) while fetching; asked for when paused or unknown.
                cached = not self._paused and (topic, partition) in self._high
                marks = consumer.get_watermark_offsets(
                    TopicPartition(topic, partition), timeout=1.0, cached=cached
                )
                if marks and marks[1] >= 0:
                    with self._lock:
                        self._high[(topic, partition)] = marks[1]
                        if marks[0] >= 0:
                            self._low[(topic, partition)] = marks[0]
        except KafkaException as exc:
            self._note_error(f"status: {exc}")
        for position in self.status().partitions:
            metrics.CONSUMER_LAG.labels(position.topic, str(position.partition)).set(position.lag)

    def _set_state(self, state: ConsumerState) -> None:
        with self._lock:
            self._state = state

    def _note_error(self, message: str) -> None:
        with self._lock:
            self._last_error = message
