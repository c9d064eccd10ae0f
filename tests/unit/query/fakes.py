"""An in-memory EntityStore for unit tests (the real one is tested against the emulator)."""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable, Sequence

from eventpipe.core.storage import tables
from eventpipe.core.storage.rows import Cells, EventRow
from query.ports import EventView, StoredRow


class InMemoryStore:
    def __init__(self) -> None:
        self.profiles: dict[bytes, Cells] = {}
        self.metrics: dict[bytes, Cells] = {}
        self.events: dict[EventView, dict[bytes, Cells]] = {v: {} for v in EventView}
        self.reads: collections.Counter[str] = collections.Counter()
        self.before_read: Callable[[], None] = lambda: None
        self._lock = threading.Lock()

    def _count(self, operation: str) -> None:
        with self._lock:
            self.reads[operation] += 1
        self.before_read()

    def put_profile(self, row: EventRow) -> None:
        self.profiles[row.key] = dict(row.cells)

    def put_metric(self, row: EventRow) -> None:
        self.metrics[row.key] = dict(row.cells)

    def put_event(self, view: EventView, row: EventRow) -> None:
        self.events[view][row.key] = dict(row.cells)

    def read_profile(self, key: bytes) -> Cells | None:
        self._count("read_profile")
        cells = self.profiles.get(key)
        return dict(cells) if cells is not None else None

    def scan_events(
        self,
        view: EventView,
        start_key: bytes,
        end_key: bytes,
        *,
        start_inclusive: bool,
        limit: int,
        event_types: Sequence[str],
    ) -> list[StoredRow]:
        self._count(f"scan_{view.value}_events")
        rows = []
        for key in sorted(self.events[view]):
            if key < start_key or (key == start_key and not start_inclusive) or key >= end_key:
                continue
            cells = self.events[view][key]
            event_type = cells[(tables.META_FAMILY, b"event_type")].decode()
            if event_types and event_type not in event_types:
                continue
            rows.append(StoredRow(key, dict(cells)))
            if len(rows) == limit:
                break
        return rows

    def scan_metrics(self, start_key: bytes, end_key: bytes) -> list[StoredRow]:
        self._count("scan_metrics")
        return [
            StoredRow(key, dict(self.metrics[key]))
            for key in sorted(self.metrics)
            if start_key <= key < end_key
        ]
