"""The EntityStore on Bigtable, through google-cloud-bigtable's data API (``BigtableDataClient``).

The data API measured faster than the classic one on the emulator (see /work/shared/STACK.md),
and reads are the whole job here. Every read is timed into
``eventpipe_query_bigtable_read_seconds`` and counted in ``reads`` (tests assert on it).
"""

from __future__ import annotations

import collections
import logging
import re
import threading
import time
from collections.abc import Sequence

from eventpipe.core.config import CommonSettings
from eventpipe.core.errors import Unavailable
from eventpipe.core.storage import tables
from eventpipe.core.storage.rows import Cells, latest_cells
from google.api_core import exceptions as api_exceptions
from google.cloud.bigtable.data import BigtableDataClient, ReadRowsQuery, RowRange
from google.cloud.bigtable.data import row_filters as rf
from google.cloud.bigtable.data.exceptions import RetryExceptionGroup

from query import metrics
from query.ports import EventView, StoredRow

log = logging.getLogger(__name__)

# Families keep one version by GC rule, but GC is lazy: read only the latest cell.
_LATEST = rf.CellsColumnLimitFilter(1)
_BACKEND_ERRORS = (api_exceptions.GoogleAPIError, RetryExceptionGroup)


def event_type_filter(event_types: Sequence[str]) -> rf.RowFilter:
    """Keeps whole rows whose ``m:event_type`` is one of ``event_types`` (evaluated server-side,
    so the scan's row limit counts matching rows only)."""
    pattern = "|".join(re.escape(t) for t in event_types).encode()
    condition = rf.RowFilterChain(
        [
            rf.FamilyNameRegexFilter(tables.META_FAMILY),
            rf.ColumnQualifierRegexFilter(b"event_type"),
            rf.ValueRegexFilter(pattern),
        ]
    )
    return rf.RowFilterChain(
        [
            _LATEST,
            rf.ConditionalRowFilter(condition, rf.PassAllFilter(True), rf.BlockAllFilter(True)),
        ]
    )


class BigtableEntityStore:
    """Reads the enrichment tables and the raw events table."""

    def __init__(self, common: CommonSettings, timeout_seconds: float = 5.0) -> None:
        self._client = BigtableDataClient(project=common.bigtable_project)
        self._timeout = timeout_seconds

        def table(name: str):  # type: ignore[no-untyped-def]
            return self._client.get_table(common.bigtable_instance, common.table_prefix + name)

        self._profiles = table(tables.ENTITY_PROFILES_TABLE)
        self._metrics = table(tables.ENTITY_METRICS_TABLE)
        self._events = {
            EventView.ENRICHED: table(tables.ENRICHED_EVENTS_TABLE),
            EventView.RAW: table(tables.RAW_EVENTS_TABLE),
        }
        self._reads_lock = threading.Lock()
        self.reads: collections.Counter[str] = collections.Counter()

    def _timed(self, operation: str):  # type: ignore[no-untyped-def]
        return _TimedRead(self, operation)

    def read_profile(self, key: bytes) -> Cells | None:
        with self._timed("read_profile"):
            row = self._profiles.read_row(key, row_filter=_LATEST, operation_timeout=self._timeout)
        return None if row is None else latest_cells(row)

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
        query = ReadRowsQuery(
            row_ranges=RowRange(
                start_key=start_key, end_key=end_key, start_is_inclusive=start_inclusive
            ),
            limit=limit,
            row_filter=event_type_filter(event_types) if event_types else _LATEST,
        )
        with self._timed(f"scan_{view.value}_events"):
            rows = self._events[view].read_rows(query, operation_timeout=self._timeout)
        return [StoredRow(row.row_key, latest_cells(row)) for row in rows]

    def scan_metrics(self, start_key: bytes, end_key: bytes) -> list[StoredRow]:
        query = ReadRowsQuery(
            row_ranges=RowRange(start_key=start_key, end_key=end_key), row_filter=_LATEST
        )
        with self._timed("scan_metrics"):
            rows = self._metrics.read_rows(query, operation_timeout=self._timeout)
        return [StoredRow(row.row_key, latest_cells(row)) for row in rows]

    def close(self) -> None:
        self._client.close()


class _TimedRead:
    """Counts and times one read; turns backend failures into UNAVAILABLE."""

    def __init__(self, store: BigtableEntityStore, operation: str) -> None:
        self._store = store
        self._operation = operation
        self._started = 0.0

    def __enter__(self) -> None:
        with self._store._reads_lock:
            self._store.reads[self._operation] += 1
        self._started = time.perf_counter()

    def __exit__(self, exc_type: object, exc: BaseException | None, _tb: object) -> None:
        metrics.BIGTABLE_READ_LATENCY.labels(self._operation).observe(
            time.perf_counter() - self._started
        )
        if exc is None:
            return
        metrics.BIGTABLE_READ_ERRORS.labels(self._operation).inc()
        if isinstance(exc, _BACKEND_ERRORS):
            log.warning(
                "bigtable read failed", extra={"operation": self._operation, "error": str(exc)}
            )
            raise Unavailable(
                "the event store is unavailable; retry later", retry_after_seconds=1
            ) from exc
