"""What deleting leaves behind: an erased entity's tombstone, and a dimension record's
tombstone version. Every writer that stores an entity's data honours the first; every reader
of dimension versions honours the second.

**Erasure tombstones** (table ``ERASURES_TABLE``, key ``keys.row_key_for_erasure``): the store's
``DeleteEntity`` writes one per erased (tenant, entity), cell ``m:erased_at`` (int64 micros,
cell timestamp the same), *before* it deletes the entity's rows. From then on an event of that
entity whose ``event_time`` is at or before ``erased_at`` must never be written again, whether
it arrives late, is re-sent, or is re-read by a replay of the raw topic. Events after
``erased_at`` are new activity and are kept. A tombstone lives ``tables.erasure_retention``
(raw retention + the raw topic's retention, docs/schema.md): longer than any message of before
the erasure can be accepted or re-read.

How a writer of an entity's rows honours them (the store consumer does this in
``store.consumer.erasures``; streaming and batch enrichment are to do the same before they
write enriched rows, metrics or profiles)::

    wanted = erasure_keys((tenant, entity) for each row of the batch)   # dedupes
    rows = bigtable_rows.read_rows(client, <prefixed ERASURES_TABLE path>, keys=list(wanted))
    erased = erasures_from_rows(rows, wanted)
    drop every row with is_erased(erased, tenant, entity, event_time)
    write the rest; then read the same keys again, and delete what a new tombstone covers

- **Cost:** one ``ReadRows`` of one key per distinct entity of the batch (almost always
  answering no row), before the write, and the same read once more after it. No cache.
- **Staleness bound:** none for the check itself: single-cluster Bigtable is strongly
  consistent, so a read after ``DeleteEntity`` wrote the tombstone sees it. The only window is
  a batch that read *before* the tombstone and writes *after* ``DeleteEntity``'s deletion pass;
  the read after the write closes it (the tombstone was written before the deletion pass, so a
  read after the write sees it). Skipping that second read leaves such rows behind.

**Dimension tombstones**: ``DeleteDimensionRecord`` writes a version of the record with its own
``valid_from`` and the cell ``m:deleted`` (``is_dimension_tombstone``). As of any time at or
after it the record has no version (as-of joins do not match it); before it the earlier
versions apply as they did.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from eventpipe.core.storage import keys
from eventpipe.core.storage.attributes import decode_int, encode_int
from eventpipe.core.storage.rows import Cells, EventRow, dimension_record_to_row
from eventpipe.core.storage.tables import META_FAMILY

EntityKey = tuple[str, str]
"""(tenant_id, entity_id)."""

ERASED_AT_QUALIFIER = b"erased_at"
"""Erasures, META_FAMILY: int64 micros, when the entity was erased."""
DIMENSION_DELETED_QUALIFIER = b"deleted"
"""Dimensions, META_FAMILY: present (``\\x01``) on a tombstone version."""


def erasure_row(tenant_id: str, entity_id: str, erased_micros: int) -> EventRow:
    """The tombstone of an erased entity; its cell timestamp is the erasure time, so the
    table's GC rule counts the retention from it."""
    cells: Cells = {
        (META_FAMILY, b"tenant_id"): tenant_id.encode(),
        (META_FAMILY, b"entity_id"): entity_id.encode(),
        (META_FAMILY, ERASED_AT_QUALIFIER): encode_int(erased_micros),
    }
    return EventRow(keys.row_key_for_erasure(tenant_id, entity_id), cells, erased_micros)


def erasure_keys(entities: Iterable[EntityKey]) -> dict[bytes, EntityKey]:
    """Tombstone row key -> (tenant, entity), one per distinct entity: the keys to read."""
    return {keys.row_key_for_erasure(t, e): (t, e) for t, e in entities}


def erasures_from_rows(
    rows: Iterable[tuple[bytes, Mapping[tuple[str, bytes], bytes]]],
    wanted: Mapping[bytes, EntityKey],
) -> dict[EntityKey, int]:
    """(tenant, entity) -> erased_at micros, from the tombstone rows read for ``wanted``.
    A row whose cell cannot be read counts as erased now and forever (the safe reading)."""
    result: dict[EntityKey, int] = {}
    for key, cells in rows:
        entity = wanted.get(bytes(key))
        if entity is None:
            continue
        raw = cells.get((META_FAMILY, ERASED_AT_QUALIFIER))
        try:
            result[entity] = decode_int(raw) if raw is not None else keys.REVERSED_TIME_MAX
        except ValueError:
            result[entity] = keys.REVERSED_TIME_MAX
    return result


def is_erased(
    erasures: Mapping[EntityKey, int], tenant_id: str, entity_id: str, event_time_micros: int
) -> bool:
    """Whether an event of the entity at ``event_time`` falls under its tombstone."""
    erased_at = erasures.get((tenant_id, entity_id))
    return erased_at is not None and event_time_micros <= erased_at


@dataclass(frozen=True)
class ErasureRecord:
    """The audit record of one erasure (table ``ERASURE_AUDIT_TABLE``, key
    ``keys.row_key_for_erasure_audit``): who erased which entity, when, and the rows deleted
    per table (table names without the prefix)."""

    tenant_id: str
    entity_id: str
    erased_micros: int
    subject: str
    deleted_rows: dict[str, int] = field(default_factory=dict)


_DELETED_ROWS_PREFIX = b"rows."


def erasure_audit_row(record: ErasureRecord) -> EventRow:
    """The audit row of an erasure: ``m:subject``, ``m:erased_at`` and ``m:rows.<table>``."""
    cells: Cells = {
        (META_FAMILY, b"tenant_id"): record.tenant_id.encode(),
        (META_FAMILY, b"entity_id"): record.entity_id.encode(),
        (META_FAMILY, b"subject"): record.subject.encode(),
        (META_FAMILY, ERASED_AT_QUALIFIER): encode_int(record.erased_micros),
    }
    for table, count in record.deleted_rows.items():
        cells[(META_FAMILY, _DELETED_ROWS_PREFIX + table.encode())] = encode_int(count)
    key = keys.row_key_for_erasure_audit(record.tenant_id, record.erased_micros, record.entity_id)
    return EventRow(key, cells, record.erased_micros)


def erasure_record_from_row(
    tenant_id: str, key: bytes, cells: Mapping[tuple[str, bytes], bytes]
) -> ErasureRecord:
    """Inverse of ``erasure_audit_row``; the time and entity come from the row key."""
    erased_micros, entity_id = keys.parse_erasure_audit_key(tenant_id, key)
    deleted = {
        qualifier[len(_DELETED_ROWS_PREFIX) :].decode(): decode_int(value)
        for (family, qualifier), value in cells.items()
        if family == META_FAMILY and qualifier.startswith(_DELETED_ROWS_PREFIX)
    }
    subject = cells.get((META_FAMILY, b"subject"), b"").decode("utf-8", "replace")
    return ErasureRecord(tenant_id, entity_id, erased_micros, subject, deleted)


def dimension_tombstone_row(
    tenant_id: str, dimension: str, key: str, valid_from_micros: int
) -> EventRow:
    """The tombstone version of a record: the record's row shape with no attributes and the
    ``m:deleted`` cell."""
    row = dimension_record_to_row(tenant_id, dimension, key, valid_from_micros, {})
    row.cells[(META_FAMILY, DIMENSION_DELETED_QUALIFIER)] = b"\x01"
    return row


def is_dimension_tombstone(cells: Mapping[tuple[str, bytes], bytes]) -> bool:
    """Whether a stored dimension version is a deletion (any value of ``m:deleted`` but
    ``\\x00``)."""
    return cells.get((META_FAMILY, DIMENSION_DELETED_QUALIFIER), b"\x00") != b"\x00"
