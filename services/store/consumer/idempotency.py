"""The idempotency key of the raw topic: (tenant_id, event_id), whatever the event time.

An event row's key holds its event time, so a re-sent event id with another event_time (or
another entity) would be a second row. Before a batch's rows are written, the consumer
claims each event id in the ``event_ids`` table (``rows.event_id_claim_row``): the claim
names the event row and the Kafka message (``topic/partition/offset``) that stored it.

- no claim: the message claims the id (the claim is written before the row);
- a claim by the same message: a replay after a crash or a rebalance; the row is written
  again, so a crash between the claim and the row loses nothing;
- a claim by another message: a duplicate; it is dropped (and counted), never written.

One entity's events share a partition and are checked in offset order by one writer, so
among copies with the same entity the first one in the topic wins, exactly. Copies naming
different entities travel in different partitions: if two consumers check them in the same
instant (between one's index read and its claim write, one batch write), both can be stored.

Cost: per batch one ReadRows of the batch's claims and one MutateRows of the new claims, on
top of the MutateRows of the rows (docs/store.md has the figures).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from eventpipe.core.storage.rows import EVENT_ID_CLAIM_QUALIFIER, EventRow, event_id_claim_row
from eventpipe.core.storage.tables import EVENT_IDS_TABLE, META_FAMILY, RAW_EVENTS_TABLE

from store.ports import KeyReader, RowFailure, RowWriter


@dataclass
class StoreOutcome:
    """Positions (in the rows given) that failed, and those dropped as duplicates."""

    failures: list[RowFailure] = field(default_factory=list)
    duplicates: list[int] = field(default_factory=list)


def claims_row(claim_cells: Mapping[tuple[str, bytes], bytes], row_key: bytes) -> bool:
    """Whether a stored claim names the event row ``row_key`` (its value starts with it)."""
    value = claim_cells.get((META_FAMILY, EVENT_ID_CLAIM_QUALIFIER), b"")
    return value.split(b"\n", 1)[0] == row_key


def code_of(exc: BaseException) -> str:
    """The gRPC code name of a failed Bigtable call (UNAVAILABLE when it carries none)."""
    code = getattr(exc, "grpc_status_code", None)
    name = getattr(code, "name", None)
    return name if isinstance(name, str) else "UNAVAILABLE"


def store_once(
    writer: RowWriter, reader: KeyReader, rows: Sequence[EventRow], sources: Sequence[str]
) -> StoreOutcome:
    """Writes each row whose event id is unclaimed or claimed by its own message.

    Never raises: a failed index read fails every row (retryable), a failed claim fails its
    row, which is then not written. Retrying the failed positions is always safe.
    """
    outcome = StoreOutcome()
    if not rows:
        return outcome
    claims = [event_id_claim_row(row, source) for row, source in zip(rows, sources, strict=True)]
    try:
        stored = reader.read_keys(EVENT_IDS_TABLE, sorted({claim.key for claim in claims}))
    except Exception as exc:
        first_line = (str(exc) or type(exc).__name__).splitlines()[0][:300]
        message = f"reading the event-id index: {first_line}"
        outcome.failures = [RowFailure(i, code_of(exc), message) for i in range(len(rows))]
        return outcome
    column = (META_FAMILY, EVENT_ID_CLAIM_QUALIFIER)
    owner: dict[bytes, bytes] = {
        row.key: row.cells[column] for row in stored if column in row.cells
    }
    keep: list[int] = []
    new_claims: list[int] = []
    for position, claim in enumerate(claims):
        value = claim.cells[column]
        current = owner.get(claim.key)
        if current is None:
            owner[claim.key] = value
            new_claims.append(position)
            keep.append(position)
        elif current == value:
            keep.append(position)
        else:
            outcome.duplicates.append(position)
    claim_failed: set[int] = set()
    for failure in writer.write_rows(EVENT_IDS_TABLE, [claims[p] for p in new_claims]):
        position = new_claims[failure.index]
        claim_failed.add(position)
        outcome.failures.append(
            RowFailure(position, failure.code, f"claiming the event id: {failure.message}")
        )
    to_write = [p for p in keep if p not in claim_failed]
    for failure in writer.write_rows(RAW_EVENTS_TABLE, [rows[p] for p in to_write]):
        outcome.failures.append(RowFailure(to_write[failure.index], failure.code, failure.message))
    outcome.failures.sort(key=lambda f: f.index)
    return outcome
