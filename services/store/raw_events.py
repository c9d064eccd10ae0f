"""Operator access to stored raw events: one entity's events in a time range, newest first."""

from __future__ import annotations

from eventpipe.common.v1 import event_pb2
from eventpipe.core.errors import InvalidArgument, Unavailable, Violation
from eventpipe.core.page_tokens import PageTokenCodec
from eventpipe.core.storage.keys import event_key_range, key_after
from eventpipe.core.storage.rows import event_from_cells, skip_bad_cells, skip_bad_row
from eventpipe.core.storage.tables import RAW_EVENTS_TABLE
from eventpipe.core.validation import TimeBounds, check_id

from store.ports import RowReader

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000


class RawEventBrowser:
    def __init__(self, reader: RowReader, tokens: PageTokenCodec) -> None:
        self._reader = reader
        self._tokens = tokens

    def list(
        self,
        tenant_id: str,
        entity_id: str,
        time_range: TimeBounds,
        page_size: int,
        page_token: str,
    ) -> tuple[list[event_pb2.Event], str]:
        """One page of events with start <= event_time < end, newest first, and the token
        of the next page ("" on the last)."""
        violations = check_id("tenant_id", tenant_id) + check_id("entity_id", entity_id)
        if not 0 <= page_size <= MAX_PAGE_SIZE:
            violations.append(Violation("page_size", f"must be 0..{MAX_PAGE_SIZE}"))
        violations += time_range.violations
        if violations:
            raise InvalidArgument("invalid request", violations=violations)
        size = page_size or DEFAULT_PAGE_SIZE
        start_micros, end_micros = time_range.start_micros, time_range.end_micros

        start_key, end_key = event_key_range(tenant_id, entity_id, start_micros, end_micros)
        binding = f"{tenant_id}#{entity_id}#{start_micros}#{end_micros}".encode()
        if page_token:
            last_key = self._tokens.verify(page_token, binding)
            start_key = max(start_key, key_after(last_key))
        try:
            rows = self._reader.read_range(RAW_EVENTS_TABLE, start_key, end_key, size + 1)
        except Exception as exc:
            raise Unavailable(f"Bigtable read failed: {exc}", 1.0) from None
        page = rows[:size]
        next_token = self._tokens.issue(binding, page[-1].key) if len(rows) > size else ""
        on_bad_cell = skip_bad_cells(RAW_EVENTS_TABLE)
        events = []
        for row in page:
            try:
                events.append(event_from_cells(row.cells, on_bad_cell))
            except ValueError as exc:  # its envelope is unreadable: skipped, and counted
                skip_bad_row(RAW_EVENTS_TABLE, row.key, exc)
        return events, next_token
