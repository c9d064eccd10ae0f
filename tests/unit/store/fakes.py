"""Fakes of the store's ports for unit tests (no network)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import TIMESTAMP_CREATE_TIME, TopicPartition
from eventpipe.core.storage.rows import EventRow
from eventpipe.core.storage.times import cell_timestamp_micros
from store.consumer.batch import DeadLetter
from store.ports import RowFailure, StoredRow


@dataclass
class FakeMessage:
    _topic: str
    _partition: int
    _offset: int
    _key: bytes | None
    _value: bytes | None
    _headers: list[tuple[str, bytes]] = field(default_factory=list)
    _timestamp_ms: int = 0

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes | None:
        return self._key

    def value(self) -> bytes | None:
        return self._value

    def headers(self) -> list[tuple[str, bytes]]:
        return self._headers

    def timestamp(self) -> tuple[int, int]:
        return (TIMESTAMP_CREATE_TIME, self._timestamp_ms)

    def error(self) -> None:
        return None


class FakeConsumer:
    """Hands out queued messages of one partition unless paused; records commits."""

    def __init__(self, messages: list[FakeMessage]) -> None:
        self.queue = list(messages)
        self.paused = False
        self.pause_calls = 0
        self.commits: list[list[tuple[str, int, int]]] = []
        self.closed = False
        self.on_assign: Any = None
        self.tp = TopicPartition("raw", 2)

    def subscribe(self, topics: list[str], **callbacks: Any) -> None:
        callbacks["on_assign"](self, [self.tp])

    def consume(self, num_messages: int, timeout: float) -> list[Any]:
        if self.paused:
            return []
        batch, self.queue = self.queue[:num_messages], self.queue[num_messages:]
        return batch

    def pause(self, partitions: list[TopicPartition]) -> None:
        self.paused = True
        self.pause_calls += 1

    def resume(self, partitions: list[TopicPartition]) -> None:
        self.paused = False

    def assignment(self) -> list[TopicPartition]:
        return [self.tp]

    def commit(self, *, offsets: list[TopicPartition], asynchronous: bool) -> None:
        self.commits.append([(tp.topic, tp.partition, tp.offset) for tp in offsets])

    def committed(self, partitions: list[TopicPartition], timeout: float) -> list[TopicPartition]:
        return [TopicPartition(tp.topic, tp.partition, -1001) for tp in partitions]

    def get_watermark_offsets(
        self, partition: TopicPartition, timeout: float, cached: bool
    ) -> tuple[int, int]:
        return (0, 100)

    def close(self) -> None:
        self.closed = True


class FakeTable:
    """Rows in a dict; ``fail_next`` makes the next writes fail with a code."""

    def __init__(self) -> None:
        self.tables: dict[str, dict[bytes, dict[tuple[str, bytes], list[tuple[int, bytes]]]]] = {}
        self.fail_next: list[str] = []
        self.fail_keys: dict[bytes, str] = {}
        self.writes = 0
        self.schema_ensured = 0

    def write_rows(
        self, table: str, rows: Sequence[EventRow], *, replace: bool = False
    ) -> list[RowFailure]:
        self.writes += 1
        if self.fail_next:
            code = self.fail_next.pop(0)
            return [RowFailure(i, code, "injected") for i in range(len(rows))]
        failures = []
        stored = self.tables.setdefault(table, {})
        for index, row in enumerate(rows):
            if row.key in self.fail_keys:
                failures.append(RowFailure(index, self.fail_keys[row.key], "refused"))
                continue
            if replace and not row.cells:  # a row deletion (DeleteFromRow alone)
                stored.pop(row.key, None)
                continue
            cells = {} if replace else stored.get(row.key, {})
            ts = cell_timestamp_micros(row.timestamp_micros)
            for column, value in row.cells.items():
                versions = [v for v in cells.get(column, []) if v[0] != ts]
                cells[column] = sorted([(ts, value), *versions], reverse=True)
            stored[row.key] = cells
        return failures

    def ensure_schema(self) -> None:
        self.schema_ensured += 1

    def read_range(
        self, table: str, start_key: bytes, end_key: bytes, limit: int
    ) -> list[StoredRow]:
        keys = sorted(k for k in self.tables.get(table, {}) if start_key <= k < end_key)
        return [
            StoredRow(k, {c: v[0][1] for c, v in self.tables[table][k].items()})
            for k in keys[:limit]
        ]

    def read_keys(self, table: str, keys: Sequence[bytes]) -> list[StoredRow]:
        stored = self.tables.get(table, {})
        return [
            StoredRow(k, {c: v[0][1] for c, v in stored[k].items()})
            for k in sorted(keys)
            if k in stored
        ]


class FakeDeadLetters:
    def __init__(self) -> None:
        self.sent: list[DeadLetter] = []
        self.fail_next = 0

    def send(self, letters: Sequence[DeadLetter], timeout: float) -> None:
        if self.fail_next:
            self.fail_next -= 1
            raise RuntimeError("kafka down")
        self.sent += letters
