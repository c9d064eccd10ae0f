"""Writes of the store API (not the consumer, which has its own retry policy): a few quick
retries of the rows Bigtable did not take, re-creating a table that vanished."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence

from eventpipe.core.storage.rows import EventRow

from store.ports import RowFailure, RowWriter

WRITE_ATTEMPTS = 3


def write_with_retries(
    writer: RowWriter,
    table: str,
    rows: Sequence[EventRow],
    *,
    replace: bool,
    retry_delay: float,
) -> dict[int, RowFailure]:
    """Failures by position in ``rows`` after up to WRITE_ATTEMPTS tries of retryable ones."""
    pending = list(range(len(rows)))
    failed: dict[int, RowFailure] = {}
    for attempt in range(WRITE_ATTEMPTS):
        if not pending:
            break
        failures = writer.write_rows(table, [rows[i] for i in pending], replace=replace)
        failed_now = {pending[f.index]: f for f in failures}
        for position in pending:
            failed.pop(position, None)
        failed.update(failed_now)
        pending = [p for p, f in failed_now.items() if f.retryable]
        if pending and attempt + 1 < WRITE_ATTEMPTS:
            if any(f.code == "NOT_FOUND" for f in failed_now.values()):
                with contextlib.suppress(Exception):  # the retry reports it
                    writer.ensure_schema()
            time.sleep(retry_delay * 2**attempt)
    return failed


def deletion(key: bytes) -> EventRow:
    """A row mutation that deletes the row ``key`` (written with ``replace=True``)."""
    return EventRow(key, {}, 0)
