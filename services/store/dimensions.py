"""Dimension (reference) data: versioned records, upserted in batches, read as of a time.

Each version is its own row (``keys.row_key_for_dimension``), newest ``valid_from`` first,
so "the version valid at T" is the first row at or after ``dimension_as_of_start(T)``.
Upserting a (key, valid_from) that exists replaces that version whole: its row is cleared
and rewritten in one atomic row mutation, so a dropped attribute does not linger.

Deleting a record writes a tombstone version (``storage.erasures.dimension_tombstone_row``)
with its own ``valid_from``: as of a time it selects, the record has no version (NOT_FOUND);
before it, the earlier versions are untouched. Enrichment's as-of joins read the same cell.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from eventpipe.common.v1 import event_pb2
from eventpipe.core.errors import EventPipeError, InvalidArgument, NotFound, Unavailable, Violation
from eventpipe.core.results import ItemOutcome, ItemStatus
from eventpipe.core.storage.erasures import dimension_tombstone_row, is_dimension_tombstone
from eventpipe.core.storage.keys import (
    REVERSED_TIME_MAX,
    dimension_as_of_start,
    dimension_prefix,
    prefix_end,
    valid_from_of_dimension_key,
)
from eventpipe.core.storage.rows import (
    BadCell,
    DimensionVersion,
    EventRow,
    attributes_from_cells,
    dimension_record_to_row,
    dimension_version_from_cells,
    skip_bad_cells,
)
from eventpipe.core.storage.tables import DIMENSIONS_TABLE
from eventpipe.core.validation import DIMENSION_NAME_PATTERN, check_attributes, check_id

from store.ports import RowFailure, RowReader, RowWriter
from store.writes import write_with_retries

MAX_BATCH_RECORDS = 1000


@dataclass(frozen=True)
class DimensionRecordInput:
    key: str
    valid_from_micros: int | None
    attributes: Mapping[str, event_pb2.AttributeValue]
    # What the servicer found wrong with the wire value of valid_from (out of range).
    valid_from_violations: tuple[Violation, ...] = ()


def check_dimension_name(value: str, field_path: str = "dimension") -> list[Violation]:
    if not DIMENSION_NAME_PATTERN.fullmatch(value):
        return [
            Violation(field_path, "must be 1-64 characters of a-z 0-9 _ starting with a letter")
        ]
    return []


def check_valid_from(field_path: str, valid_from_micros: int) -> list[Violation]:
    """A version's valid_from must fit a row key (the wire range is checked before)."""
    if not 0 <= valid_from_micros < REVERSED_TIME_MAX:
        return [Violation(field_path, "must be at or after 1970-01-01")]
    return []


def check_record(record: DimensionRecordInput, index: int) -> list[Violation]:
    prefix = f"records[{index}]"
    violations = check_id(f"{prefix}.key", record.key)
    if record.valid_from_violations:
        violations += record.valid_from_violations
    elif record.valid_from_micros is None:
        violations.append(Violation(f"{prefix}.valid_from", "is required"))
    else:
        violations += check_valid_from(f"{prefix}.valid_from", record.valid_from_micros)
    violations += check_attributes(record.attributes, f"{prefix}.attributes")
    return violations


def _check_scope(tenant_id: str, dimension: str) -> list[Violation]:
    return check_id("tenant_id", tenant_id) + check_dimension_name(dimension)


class DimensionStore:
    def __init__(
        self,
        writer: RowWriter,
        reader: RowReader,
        retry_delay: float = 0.1,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._writer = writer
        self._reader = reader
        self._retry_delay = retry_delay
        self._clock = clock

    def upsert(
        self, tenant_id: str, dimension: str, records: Sequence[DimensionRecordInput]
    ) -> list[ItemOutcome]:
        """Writes the valid records; one outcome per record, in order (partial success)."""
        violations = _check_scope(tenant_id, dimension)
        if not records:
            violations.append(Violation("records", "must hold at least one record"))
        elif len(records) > MAX_BATCH_RECORDS:
            violations.append(
                Violation("records", f"at most {MAX_BATCH_RECORDS} records per request")
            )
        if violations:
            raise InvalidArgument("invalid request", violations=violations)

        outcomes: list[ItemOutcome | None] = [None] * len(records)
        seen: set[tuple[str, int]] = set()
        to_write: list[int] = []
        rows: list[EventRow] = []
        for index, record in enumerate(records):
            problems = check_record(record, index)
            if problems:
                outcomes[index] = ItemOutcome(
                    index,
                    record.key,
                    ItemStatus.REJECTED,
                    "INVALID_ARGUMENT",
                    tuple(problems),
                )
                continue
            assert record.valid_from_micros is not None
            identity = (record.key, record.valid_from_micros)
            if identity in seen:
                outcomes[index] = ItemOutcome(index, record.key, ItemStatus.DUPLICATE)
                continue
            seen.add(identity)
            to_write.append(index)
            rows.append(
                dimension_record_to_row(
                    tenant_id, dimension, record.key, record.valid_from_micros, record.attributes
                )
            )

        failed = self._write_with_retries(rows)
        for position, index in enumerate(to_write):
            failure = failed.get(position)
            if failure is None:
                outcomes[index] = ItemOutcome(index, records[index].key, ItemStatus.ACCEPTED)
            else:
                outcomes[index] = ItemOutcome(
                    index,
                    records[index].key,
                    ItemStatus.REJECTED,
                    failure.code if failure.retryable else "INTERNAL",
                    # Not a field's fault, so no violation: the reason is the message.
                    detail=f"not written: {failure.code}: {failure.message}",
                )
        if rows and len(failed) == len(rows) and all(f.retryable for f in failed.values()):
            # Nothing was written: say so as a whole, with retry advice, not item by item.
            raise Unavailable("Bigtable is unavailable; no record was written", 1.0)
        return [outcome for outcome in outcomes if outcome is not None]

    def _write_with_retries(self, rows: list[EventRow]) -> dict[int, RowFailure]:
        return write_with_retries(
            self._writer, DIMENSIONS_TABLE, rows, replace=True, retry_delay=self._retry_delay
        )

    def delete(
        self,
        tenant_id: str,
        dimension: str,
        key: str,
        valid_from_micros: int | None,
        valid_from_violations: Sequence[Violation] = (),
    ) -> int:
        """Writes the record's tombstone version; returns its valid_from (now when None)."""
        violations = _check_scope(tenant_id, dimension) + check_id("key", key)
        violations += valid_from_violations
        if valid_from_micros is None:
            valid_from_micros = int(self._clock() * 1_000_000)
        elif not valid_from_violations:
            violations += check_valid_from("valid_from", valid_from_micros)
        if violations:
            raise InvalidArgument("invalid request", violations=violations)
        row = dimension_tombstone_row(tenant_id, dimension, key, valid_from_micros)
        failure = self._write_with_retries([row]).get(0)
        if failure is not None:
            if failure.retryable:
                raise Unavailable(f"Bigtable is unavailable: {failure.message}", 1.0)
            raise EventPipeError(f"not written: {failure.code}: {failure.message}")
        return valid_from_micros

    def get(
        self,
        tenant_id: str,
        dimension: str,
        key: str,
        as_of_micros: int | None,
        as_of_violations: Sequence[Violation] = (),
    ) -> DimensionVersion:
        """The version valid at ``as_of`` (the latest ``valid_from`` when None)."""
        violations = _check_scope(tenant_id, dimension) + check_id("key", key)
        violations += as_of_violations
        if violations:
            raise InvalidArgument("invalid request", violations=violations)
        prefix = dimension_prefix(tenant_id, dimension, key)
        start = (
            dimension_as_of_start(tenant_id, dimension, key, as_of_micros)
            if as_of_micros is not None
            else prefix
        )
        try:
            rows = self._reader.read_range(DIMENSIONS_TABLE, start, prefix_end(prefix), 1)
        except Exception as exc:
            raise Unavailable(f"Bigtable read failed: {exc}", 1.0) from None
        when = " as of the requested time" if as_of_micros is not None else ""
        if not rows:
            raise NotFound(f"no {dimension} record {key!r}{when}")
        row = rows[0]
        if is_dimension_tombstone(row.cells):
            raise NotFound(f"{dimension} record {key!r} is deleted{when}")
        try:
            return dimension_version_from_cells(row.cells, skip_bad_cells(DIMENSIONS_TABLE))
        except BadCell as bad:
            # Key and valid_from are in the row key too: answer from it, with the
            # attributes that can be read, rather than fail the record.
            skip_bad_cells(DIMENSIONS_TABLE)(bad)
            return DimensionVersion(
                key=key,
                valid_from_micros=valid_from_of_dimension_key(row.key),
                attributes=attributes_from_cells(row.cells, skip_bad_cells(DIMENSIONS_TABLE)),
            )
