"""Erasing an entity (``DeleteEntity``) and the record of erasures (``ListEntityErasures``).

In this order, so that nothing can bring the data back:

1. the **tombstone** (``storage.erasures.erasure_row``, ``erased_at`` = now): from here on the
   store consumer drops every event of the entity with ``event_time <= erased_at``, and checks
   again after each write (``store.consumer.erasures``), which closes the race with a batch in
   flight;
2. the **rows**, table by table, with Bigtable's row deletes (``DeleteFromRow``) on the keys
   read in the entity's key range (``keys.entity_rows_range``): raw events, their
   idempotency claims (when the claim names the entity's row), enriched events, metric
   buckets, the profile. Counted per table;
3. the **audit record** (``storage.erasures.erasure_audit_row``): who, when, which entity,
   rows per table; kept after the tombstone expires;
4. the **entity change** on the entity-changes topic, so query drops its cached answers.

Each step is idempotent, so a failed call is retried whole: UNAVAILABLE says so.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Protocol

from eventpipe.core.entity_changes import EntityChange
from eventpipe.core.errors import InvalidArgument, Unavailable, Violation
from eventpipe.core.page_tokens import PageTokenCodec
from eventpipe.core.storage import keys
from eventpipe.core.storage.erasures import (
    ErasureRecord,
    erasure_audit_row,
    erasure_record_from_row,
    erasure_row,
)
from eventpipe.core.storage.rows import EventRow
from eventpipe.core.storage.tables import (
    ENRICHED_EVENTS_TABLE,
    ENTITY_METRICS_TABLE,
    ENTITY_PROFILES_TABLE,
    ERASURE_AUDIT_TABLE,
    ERASURES_TABLE,
    EVENT_IDS_TABLE,
    META_FAMILY,
    RAW_EVENTS_TABLE,
)
from eventpipe.core.validation import check_id

from store.consumer.idempotency import claims_row
from store.ports import KeyReader, RowReader, RowWriter, StoredRow
from store.writes import deletion, write_with_retries

PAGE_ROWS = 1000  # rows read (and deleted) per step of one table's range
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
ANONYMOUS = "anonymous"


class ChangePublisher(Protocol):
    def publish(self, changes: Sequence[EntityChange], timeout: float = 10.0) -> int:
        """Returns how many changes Kafka did not confirm."""
        ...


class EntityEraser:
    def __init__(
        self,
        writer: RowWriter,
        reader: RowReader,
        key_reader: KeyReader,
        changes: ChangePublisher,
        tokens: PageTokenCodec,
        *,
        retry_delay: float = 0.1,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._writer = writer
        self._reader = reader
        self._key_reader = key_reader
        self._changes = changes
        self._tokens = tokens
        self._retry_delay = retry_delay
        self._clock = clock

    def erase(self, tenant_id: str, entity_id: str, subject: str | None) -> ErasureRecord:
        """Erases the entity (see the module docstring); returns the audit record written."""
        violations = check_id("tenant_id", tenant_id) + check_id("entity_id", entity_id)
        if violations:
            raise InvalidArgument("invalid request", violations=violations)
        erased_micros = int(self._clock() * 1_000_000)
        self._write(ERASURES_TABLE, [erasure_row(tenant_id, entity_id, erased_micros)], False)
        deleted: dict[str, int] = {}
        start, end = keys.entity_rows_range(tenant_id, entity_id)
        deleted[RAW_EVENTS_TABLE], deleted[EVENT_IDS_TABLE] = self._delete_raw_events(
            tenant_id, start, end
        )
        for table in (ENRICHED_EVENTS_TABLE, ENTITY_METRICS_TABLE):
            deleted[table] = self._delete_range(table, start, end)
        profile = keys.row_key_for_profile(tenant_id, entity_id)
        deleted[ENTITY_PROFILES_TABLE] = self._delete_range(
            ENTITY_PROFILES_TABLE, profile, keys.key_after(profile)
        )
        record = ErasureRecord(tenant_id, entity_id, erased_micros, subject or ANONYMOUS, deleted)
        self._write(ERASURE_AUDIT_TABLE, [erasure_audit_row(record)], False)
        if self._changes.publish([EntityChange(tenant_id, entity_id, erased_micros)]):
            raise Unavailable(
                "the entity's rows are deleted, but Kafka did not confirm the entity change "
                "that empties query's cache; call again (erasing is idempotent)",
                1.0,
            )
        return record

    def records(
        self, tenant_id: str, page_size: int, page_token: str
    ) -> tuple[list[ErasureRecord], str]:
        """One page of the tenant's erasure records, newest first, and the next page's token."""
        violations = check_id("tenant_id", tenant_id)
        if not 0 <= page_size <= MAX_PAGE_SIZE:
            violations.append(Violation("page_size", f"must be 0..{MAX_PAGE_SIZE}"))
        if violations:
            raise InvalidArgument("invalid request", violations=violations)
        size = page_size or DEFAULT_PAGE_SIZE
        start, end = keys.prefix_range(keys.tenant_prefix(tenant_id))
        binding = tenant_id.encode()
        if page_token:
            start = max(start, keys.key_after(self._tokens.verify(page_token, binding)))
        rows = self._read_range(ERASURE_AUDIT_TABLE, start, end, size + 1)
        page = rows[:size]
        next_token = self._tokens.issue(binding, page[-1].key) if len(rows) > size else ""
        return [erasure_record_from_row(tenant_id, row.key, row.cells) for row in page], next_token

    # ------------------------------------------------------------ steps

    def _delete_raw_events(self, tenant_id: str, start: bytes, end: bytes) -> tuple[int, int]:
        """Deletes the entity's raw events and the claims that name them: (rows, claims)."""
        rows_deleted = claims_deleted = 0
        while True:
            rows = self._read_range(RAW_EVENTS_TABLE, start, end, PAGE_ROWS)
            if not rows:
                return rows_deleted, claims_deleted
            claim_keys = {
                keys.row_key_for_event_id(tenant_id, event_id.decode()): row.key
                for row in rows
                if (event_id := row.cells.get((META_FAMILY, b"event_id")))
            }
            claims_deleted += self._delete_own_claims(claim_keys)
            self._write(RAW_EVENTS_TABLE, [deletion(row.key) for row in rows], True)
            rows_deleted += len(rows)
            start = keys.key_after(rows[-1].key)

    def _delete_own_claims(self, claim_keys: dict[bytes, bytes]) -> int:
        """Deletes the claims (idempotency index) that name one of the given event rows; a
        claim naming another row (a copy stored for another entity first) stays."""
        try:
            stored = self._key_reader.read_keys(EVENT_IDS_TABLE, sorted(claim_keys))
        except Exception as exc:
            raise Unavailable(f"Bigtable read failed: {exc}", 1.0) from None
        own = [row.key for row in stored if claims_row(row.cells, claim_keys[row.key])]
        self._write(EVENT_IDS_TABLE, [deletion(key) for key in own], True)
        return len(own)

    def _delete_range(self, table: str, start: bytes, end: bytes) -> int:
        deleted = 0
        while True:
            rows = self._read_range(table, start, end, PAGE_ROWS)
            if not rows:
                return deleted
            self._write(table, [deletion(row.key) for row in rows], True)
            deleted += len(rows)
            start = keys.key_after(rows[-1].key)

    def _read_range(self, table: str, start: bytes, end: bytes, limit: int) -> list[StoredRow]:
        try:
            return self._reader.read_range(table, start, end, limit)
        except Exception as exc:
            raise Unavailable(f"Bigtable read failed: {exc}", 1.0) from None

    def _write(self, table: str, rows: list[EventRow], replace: bool) -> None:
        if not rows:
            return
        failed = write_with_retries(
            self._writer, table, rows, replace=replace, retry_delay=self._retry_delay
        )
        if failed:
            first = next(iter(failed.values()))
            raise Unavailable(
                f"Bigtable did not take {len(failed)} rows of {table} ({first.code}: "
                f"{first.message}); nothing is lost by calling again",
                1.0,
            )
