"""The raw ReadRows chunk merger and MutateRows request builder (no server: fed responses)."""

from __future__ import annotations

from typing import Any

import pytest
from eventpipe.core import bigtable_rows
from eventpipe.core.storage.rows import EventRow
from google.cloud.bigtable_v2.types import bigtable as bigtable_types

Chunk = bigtable_types.ReadRowsResponse.CellChunk


class FakeClient:
    """Returns canned ReadRows / MutateRows responses and records the requests."""

    def __init__(
        self, read: list[list[Chunk]] | None = None, statuses: tuple[int, ...] = ()
    ) -> None:
        self.read = read or []
        self.statuses = list(statuses)
        self.requests: list[Any] = []

    def read_rows(self, request: Any, retry: Any, timeout: float) -> list[Any]:
        self.requests.append(bigtable_types.ReadRowsRequest.pb(request))
        return [bigtable_types.ReadRowsResponse(chunks=chunks) for chunks in self.read]

    def mutate_rows(self, request: Any, retry: Any, timeout: float) -> list[Any]:
        self.requests.append(bigtable_types.MutateRowsRequest.pb(request))
        entries = [
            bigtable_types.MutateRowsResponse.Entry(index=i, status={"code": code})
            for i, code in enumerate(self.statuses)
        ]
        return [bigtable_types.MutateRowsResponse(entries=entries)]


def cell(**fields: Any) -> Chunk:
    if "family" in fields:
        fields["family_name"] = {"value": fields.pop("family")}
    if "qualifier" in fields:
        fields["qualifier"] = {"value": fields.pop("qualifier")}
    return Chunk(**fields)


def test_rows_merge_newest_version_split_values_and_resets() -> None:
    client = FakeClient(
        read=[
            [
                cell(
                    row_key=b"r1", family="m", qualifier=b"a", timestamp_micros=2000, value=b"new"
                ),
                cell(timestamp_micros=1000, value=b"old"),  # an older version of m:a
                cell(qualifier=b"b", value=b"he", value_size=5),
                cell(value=b"llo", commit_row=True),
            ],
            [
                cell(row_key=b"r2", family="s", qualifier=b"x", value=b"dropped"),
                cell(reset_row=True),
            ],
            [
                cell(row_key=b"r2", family="s", qualifier=b"x", value=b"kept"),
                cell(family="i", qualifier=b"y", value=b"1", commit_row=True),
            ],
        ]
    )
    rows = list(bigtable_rows.read_rows(client, "t", ranges=[(b"a", b"")]))  # type: ignore[arg-type]
    assert rows == [
        (b"r1", {("m", b"a"): b"new", ("m", b"b"): b"hello"}),
        (b"r2", {("s", b"x"): b"kept", ("i", b"y"): b"1"}),
    ]


def test_read_request_carries_ranges_keys_and_the_cell_time_window() -> None:
    client = FakeClient()
    list(
        bigtable_rows.read_rows(
            client,  # type: ignore[arg-type]
            "projects/p/instances/i/tables/t",
            ranges=[(b"a", b"b"), (b"c", b"")],
            keys=[b"k"],
            start_micros=1000,
            end_micros=5000,
        )
    )
    request = client.requests[0]
    assert request.table_name == "projects/p/instances/i/tables/t"
    assert [(r.start_key_closed, r.end_key_open) for r in request.rows.row_ranges] == [
        (b"a", b"b"),
        (b"c", b""),
    ]
    assert list(request.rows.row_keys) == [b"k"]
    window = request.filter.timestamp_range_filter
    assert (window.start_timestamp_micros, window.end_timestamp_micros) == (1000, 5000)


def test_mutate_replaces_rows_and_raises_on_a_failed_entry() -> None:
    rows = [EventRow(b"r1", {("m", b"a"): b"1"}, 1_234_567), EventRow(b"r2", {}, 0)]
    ok = FakeClient(statuses=[0, 0])
    bigtable_rows.mutate_rows_or_raise(ok, "t", rows)  # type: ignore[arg-type]
    entry = ok.requests[0].entries[0]
    assert entry.row_key == b"r1"
    assert entry.mutations[0].HasField("delete_from_row")
    set_cell = entry.mutations[1].set_cell
    assert (set_cell.family_name, set_cell.column_qualifier, set_cell.value) == ("m", b"a", b"1")
    assert set_cell.timestamp_micros == 1_234_000  # truncated to milliseconds

    with pytest.raises(RuntimeError, match="row 1 of 2"):
        bigtable_rows.mutate_rows_or_raise(FakeClient(statuses=[0, 14]), "t", rows)  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="confirmed 1 of 2"):
        bigtable_rows.mutate_rows_or_raise(FakeClient(statuses=[0]), "t", rows)  # type: ignore[arg-type]
