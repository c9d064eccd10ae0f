"""Bulk row I/O on the generated GAPIC client with plain protobuf messages: the fast path.

The data API (``google.cloud.bigtable.data``) and the legacy ``Table`` build proto-plus
wrappers per cell and merge read chunks through a general state machine. For bulk work that
dominates: on the emulator, ``build_mutate_rows_request`` writes our 8-12-cell rows ~4x faster
than ``Table.mutate_rows`` (docs/store.md), and ``read_rows`` reads ~2.5x faster than
``Table.read_rows`` (docs/enrich.md). The store's writer and the enrich jobs' Spark tasks use
this module; everything else uses the ordinary clients of ``eventpipe.core.bigtable``.

With ``BIGTABLE_EMULATOR_HOST`` set the client talks to the emulator, otherwise to Bigtable
with application-default credentials.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import grpc
from google.cloud.bigtable_v2 import BigtableClient
from google.cloud.bigtable_v2.services.bigtable.transports import BigtableGrpcTransport
from google.cloud.bigtable_v2.types import bigtable as bigtable_types

from eventpipe.core.storage.keys import KeyRange
from eventpipe.core.storage.rows import Cells, EventRow
from eventpipe.core.storage.times import cell_timestamp_micros

MutateRowsRequest = bigtable_types.MutateRowsRequest
MutateRowsResponse = bigtable_types.MutateRowsResponse
_RawMutateRowsRequest: Any = MutateRowsRequest.pb()
_ReadRowsRequest = bigtable_types.ReadRowsRequest
_RawReadRowsRequest: Any = _ReadRowsRequest.pb()
_ReadRowsResponse = bigtable_types.ReadRowsResponse


def gapic_client() -> BigtableClient:
    """A Bigtable data-plane client (one channel); make one per process and reuse it."""
    emulator = os.environ.get("BIGTABLE_EMULATOR_HOST")
    if emulator:
        channel = grpc.insecure_channel(
            emulator,
            options=[("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)],
        )
        return BigtableClient(transport=BigtableGrpcTransport(channel=channel))
    return BigtableClient()  # application-default credentials


def table_path(project: str, instance: str, table: str) -> str:
    return f"projects/{project}/instances/{instance}/tables/{table}"


def build_mutate_rows_request(table_name: str, rows: Sequence[EventRow], replace: bool) -> Any:
    """A raw ``google.bigtable.v2.MutateRowsRequest``: one entry per row, cell ts = row time.
    ``replace`` deletes the row first in the same entry (atomic per row)."""
    request = _RawMutateRowsRequest(table_name=table_name)
    entries = request.entries
    for row in rows:
        entry = entries.add()
        entry.row_key = row.key
        mutations = entry.mutations
        if replace:
            mutations.add().delete_from_row.SetInParent()
        ts = cell_timestamp_micros(row.timestamp_micros)
        for (family, qualifier), value in row.cells.items():
            cell = mutations.add().set_cell
            cell.family_name = family
            cell.column_qualifier = qualifier
            cell.timestamp_micros = ts
            cell.value = value
    return request


def mutate_rows_or_raise(
    client: BigtableClient, table_name: str, rows: Sequence[EventRow], timeout: float = 60.0
) -> None:
    """Replaces the rows (delete + set, atomic per row); raises if any row was not applied.
    For idempotent writers that retry the whole batch (Spark tasks)."""
    if not rows:
        return
    request = build_mutate_rows_request(table_name, rows, replace=True)
    confirmed = 0
    for response in client.mutate_rows(
        request=MutateRowsRequest.wrap(request), retry=None, timeout=timeout
    ):
        for entry in MutateRowsResponse.pb(response).entries:
            if entry.status.code != 0:
                raise RuntimeError(
                    f"Bigtable mutation of row {entry.index} of {len(rows)} failed: "
                    f"code {entry.status.code} {entry.status.message}"
                )
            confirmed += 1
    if confirmed != len(rows):
        raise RuntimeError(f"Bigtable confirmed {confirmed} of {len(rows)} mutations")


def read_rows(
    client: BigtableClient,
    table_name: str,
    *,
    ranges: Iterable[KeyRange] = (),
    keys: Iterable[bytes] = (),
    start_micros: int | None = None,
    end_micros: int | None = None,
    limit: int = 0,
    timeout: float = 600.0,
) -> Iterator[tuple[bytes, Cells]]:
    """Rows in the given ranges and keys (the whole table if neither), in the one row shape
    (``Cells``: the newest cell of each column), merged straight from the read chunks.

    ``start_micros``/``end_micros`` filter cells by timestamp on the server. No resumption: a
    broken stream raises, and the caller (a Spark task) retries the whole read.
    """
    request = _RawReadRowsRequest(table_name=table_name, rows_limit=limit)
    for start, end in ranges:
        row_range = request.rows.row_ranges.add()
        row_range.start_key_closed = start
        if end:
            row_range.end_key_open = end
    for key in keys:
        request.rows.row_keys.append(key)
    if start_micros is not None or end_micros is not None:
        window = request.filter.timestamp_range_filter
        window.start_timestamp_micros = start_micros or 0
        if end_micros is not None:
            window.end_timestamp_micros = end_micros
    stream = client.read_rows(request=_ReadRowsRequest.wrap(request), retry=None, timeout=timeout)
    key = b""
    cells: Cells = {}
    family = ""
    qualifier = b""
    value = b""
    partial: list[bytes] = []
    for response in stream:
        for chunk in _ReadRowsResponse.pb(response).chunks:
            if chunk.row_key:
                key = chunk.row_key
            if chunk.HasField("family_name"):
                family = chunk.family_name.value
            if chunk.HasField("qualifier"):
                qualifier = chunk.qualifier.value
            if chunk.value_size:  # a value split over chunks: the rest follows
                partial.append(chunk.value)
            else:
                if partial:
                    partial.append(chunk.value)
                    value = b"".join(partial)
                    partial = []
                else:
                    value = chunk.value
                if chunk.reset_row:
                    cells = {}
                    continue
                cells.setdefault((family, qualifier), value)  # versions come newest first
            if chunk.commit_row:
                yield key, cells
                cells = {}
