"""The consumer's side of erasure: no event of an erased entity at or before its erasure is
ever written again, whether it arrives late, is re-sent, or is re-read by a replay.

Per batch (and per retry of a batch's rows), in the writer thread:

1. **before** the write: one ``ReadRows`` of the tombstones (``storage.erasures``) of the
   batch's distinct entities; the rows they cover are dropped (and deleted, with their
   claims, in case an earlier attempt wrote them) and counted;
2. the rest is written (``store.consumer.idempotency``);
3. **after** the write: the same read once more, for the entities just written; rows a new
   tombstone covers are deleted. This closes the race with ``DeleteEntity``, which writes
   its tombstone *before* deleting rows: a row written after that deletion pass is written
   after the tombstone, so the read that follows it sees the tombstone.

No cache, so the staleness bound is nil; the cost is two ``ReadRows`` of one key per distinct
entity per batch (almost always answering no row; docs/store.md has the figures).
"""

from __future__ import annotations

from collections.abc import Sequence

from eventpipe.core.storage import keys
from eventpipe.core.storage.erasures import (
    EntityKey,
    erasure_keys,
    erasures_from_rows,
    is_erased,
)
from eventpipe.core.storage.rows import EventRow
from eventpipe.core.storage.tables import (
    ERASURES_TABLE,
    EVENT_IDS_TABLE,
    META_FAMILY,
    RAW_EVENTS_TABLE,
)

from store.consumer.idempotency import claims_row, code_of
from store.ports import KeyReader, RowFailure, RowWriter
from store.writes import deletion


def entity_of(row: EventRow) -> EntityKey:
    cells = row.cells
    return (
        cells[(META_FAMILY, b"tenant_id")].decode(),
        cells[(META_FAMILY, b"entity_id")].decode(),
    )


def erased_positions(reader: KeyReader, rows: Sequence[EventRow]) -> list[int]:
    """Positions of the rows whose entity's tombstone covers their event time; raises when
    the tombstones cannot be read."""
    if not rows:
        return []
    wanted = erasure_keys({entity_of(row) for row in rows})
    stored = reader.read_keys(ERASURES_TABLE, sorted(wanted))
    if not stored:
        return []
    erased = erasures_from_rows(((row.key, row.cells) for row in stored), wanted)
    return [
        position
        for position, row in enumerate(rows)
        if is_erased(erased, *entity_of(row), row.timestamp_micros)
    ]


def delete_erased_rows(
    writer: RowWriter, reader: KeyReader, rows: Sequence[EventRow]
) -> list[RowFailure]:
    """Deletes ``rows`` (of erased entities) and the idempotency claims that name them, in
    case they were written; failures index into ``rows``. Rare: only erased entities' events
    get here."""
    if not rows:
        return []
    claim_keys = {
        keys.row_key_for_event_id(*_tenant_and_event_id(row)): position
        for position, row in enumerate(rows)
    }
    try:
        claims = reader.read_keys(EVENT_IDS_TABLE, sorted(claim_keys))
    except Exception as exc:
        message = f"reading the claims of erased events: {exc}".splitlines()[0][:300]
        return [RowFailure(p, code_of(exc), message) for p in range(len(rows))]
    own = [c.key for c in claims if claims_row(c.cells, rows[claim_keys[c.key]].key)]
    failures: dict[int, RowFailure] = {}
    for failure in writer.write_rows(EVENT_IDS_TABLE, [deletion(k) for k in own], replace=True):
        position = claim_keys[own[failure.index]]
        failures[position] = RowFailure(position, failure.code, failure.message)
    for failure in writer.write_rows(
        RAW_EVENTS_TABLE, [deletion(row.key) for row in rows], replace=True
    ):
        failures.setdefault(failure.index, RowFailure(failure.index, failure.code, failure.message))
    return sorted(failures.values(), key=lambda f: f.index)


def _tenant_and_event_id(row: EventRow) -> tuple[str, str]:
    cells = row.cells
    return cells[(META_FAMILY, b"tenant_id")].decode(), cells[(META_FAMILY, b"event_id")].decode()
