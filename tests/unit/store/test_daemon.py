"""The consume-write-commit loop, with fake Kafka and Bigtable."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from eventpipe.core.storage.rows import event_to_row
from eventpipe.core.storage.tables import RAW_EVENTS_TABLE
from eventpipe.core.validation import EventLimits
from eventpipe.core.waiting import wait_until
from store.consumer.backoff import Backoff
from store.consumer.daemon import ConsumerDaemon
from store.consumer.status import ConsumerState

from tests.unit.store.fakes import FakeConsumer, FakeDeadLetters, FakeTable
from tests.unit.store.test_batch import event, message


class Harness:
    def __init__(self, count: int = 5) -> None:
        self.events = [event(i) for i in range(count)]
        self.consumer = FakeConsumer([message(e, offset=i) for i, e in enumerate(self.events)])
        self.table = FakeTable()
        self.dead = FakeDeadLetters()
        self.daemon = ConsumerDaemon(
            topic="raw",
            consumer_factory=lambda: self.consumer,
            writer=self.table,
            index_reader=self.table,
            dead_letters=self.dead,
            limits=EventLimits(),
            backoff=Backoff(0.001, 0.01),
            batch_max_messages=3,
            batch_max_wait=0.001,
            status_interval=0.0,
        )
        self.thread = threading.Thread(target=self.daemon.run)

    def start(self) -> Harness:
        self.thread.start()
        return self

    def stop(self, grace: float = 5.0) -> None:
        self.daemon.request_stop(grace)
        self.thread.join(10)
        assert not self.thread.is_alive()

    def stored(self) -> set[bytes]:
        return set(self.table.tables.get(RAW_EVENTS_TABLE, {}))

    def committed(self) -> int:
        return max((o for commit in self.consumer.commits for _, _, o in commit), default=0)


@pytest.fixture
def harness() -> Iterator[Harness]:
    h = Harness()
    yield h
    if h.thread.is_alive():
        h.stop()


def test_rows_are_written_then_their_offsets_committed(harness: Harness) -> None:
    harness.start()
    wait_until(lambda: harness.committed() == 5, timeout=5, what="commits")
    assert harness.stored() == {event_to_row(e).key for e in harness.events}
    status = harness.daemon.status()
    assert status.rows_written == 5 and status.partitions[0].committed_offset == 5
    harness.stop()
    assert harness.consumer.closed
    assert harness.daemon.status().state is ConsumerState.STOPPED


def test_an_unavailable_bigtable_pauses_consumption_and_commits_nothing_until_written(
    harness: Harness,
) -> None:
    commits_at_write: list[int] = []
    original = harness.table.write_rows

    def recording_write(*args, **kwargs):  # type: ignore[no-untyped-def]
        commits_at_write.append(len(harness.consumer.commits))
        return original(*args, **kwargs)

    harness.table.write_rows = recording_write  # type: ignore[method-assign]
    harness.table.fail_next = ["UNAVAILABLE"] * 4
    harness.start()
    wait_until(lambda: harness.committed() == 5, timeout=5, what="commits after recovery")
    assert commits_at_write[:5] == [0, 0, 0, 0, 0]  # the failing attempts and the retry
    assert harness.consumer.pause_calls >= 1 and not harness.consumer.paused
    assert harness.stored() == {event_to_row(e).key for e in harness.events}
    assert "UNAVAILABLE" in harness.daemon.status().last_error


def test_a_vanished_table_is_recreated_before_the_retry(harness: Harness) -> None:
    harness.table.fail_next = ["NOT_FOUND"]
    harness.start()
    wait_until(lambda: harness.committed() == 5, timeout=5, what="commits")
    assert harness.table.schema_ensured >= 1


def test_a_row_bigtable_always_refuses_is_dead_lettered_and_does_not_block(
    harness: Harness,
) -> None:
    refused = event_to_row(harness.events[1]).key
    harness.table.fail_keys[refused] = "INVALID_ARGUMENT"
    harness.start()
    wait_until(lambda: harness.committed() == 5, timeout=5, what="commits")
    assert harness.stored() == {event_to_row(e).key for e in harness.events} - {refused}
    assert len(harness.dead.sent) == 1
    assert b"INVALID_ARGUMENT" in dict(harness.dead.sent[0].headers)["eventpipe-dlq-error"]


def test_a_dead_letter_kafka_did_not_confirm_holds_the_commit_back_until_it_does() -> None:
    h = Harness(count=0)
    h.consumer.queue = [message(event(0), offset=0, _value=b"\x01garbage")]
    h.dead.fail_next = 3
    h.start()
    try:
        wait_until(lambda: h.committed() == 1, timeout=5, what="the commit")
        assert len(h.dead.sent) == 1
    finally:
        h.stop()


def test_a_stop_during_an_outage_abandons_the_batch_uncommitted_and_closes(
    harness: Harness,
) -> None:
    harness.table.fail_next = ["UNAVAILABLE"] * 10_000
    harness.start()
    wait_until(
        lambda: harness.daemon.status().state is ConsumerState.PAUSED, timeout=5, what="pause"
    )
    harness.stop(grace=0.05)
    assert harness.consumer.commits == []
    assert harness.consumer.closed


def test_a_partition_is_not_reported_lag_free_before_its_offsets_are_known() -> None:
    h = Harness(count=0)
    h.daemon._on_assign(None, [h.consumer.tp])  # assigned, nothing refreshed yet
    assert h.daemon.status().partitions == []


def test_a_loop_that_dies_fails_its_liveness_check_and_its_status_says_why() -> None:
    h = Harness()

    def broken_consume(num_messages: int, timeout: float) -> list[object]:
        raise RuntimeError("librdkafka fell over")

    h.consumer.consume = broken_consume  # type: ignore[method-assign]
    h.daemon.check_alive()  # alive before it runs
    with pytest.raises(RuntimeError):
        h.daemon._run_logged()  # the loop thread's body
    with pytest.raises(RuntimeError, match=r"consumer loop failed: .*librdkafka fell over"):
        h.daemon.check_alive()
    status = h.daemon.status()
    assert status.state is ConsumerState.STOPPED
    assert "librdkafka fell over" in status.last_error
    assert h.consumer.closed
