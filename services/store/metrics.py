"""Prometheus metrics of the store's API (the consumer's are in store.consumer.metrics)."""

from __future__ import annotations

import logging

from eventpipe.core.schema import BadCell, OnBadCell
from prometheus_client import Counter

log = logging.getLogger(__name__)

UNREADABLE_CELLS = Counter(
    "eventpipe_store_unreadable_cells_total",
    "Stored cells (skipped=cell) or rows (skipped=row) left out of a ListRawEvents or "
    "GetDimensionRecord answer because they could not be decoded.",
    ["table", "skipped"],
)


def skipped_cell(table: str) -> OnBadCell:
    """An ``on_bad_cell`` callback that logs and counts the cell left out."""

    def report(bad: BadCell) -> None:
        UNREADABLE_CELLS.labels(table, "cell").inc()
        log.warning("skipping an unreadable cell", extra={"table": table, "cell": str(bad)})

    return report


def skipped_row(table: str, key: bytes, error: Exception) -> None:
    UNREADABLE_CELLS.labels(table, "row").inc()
    log.warning(
        "skipping an unreadable row",
        extra={"table": table, "row_key": key.hex(), "error": str(error)},
    )
