"""Writes test rows to the real emulator: raw events via storage.rows.event_to_row, and the
rows enrichment will write (built by tests/unit/query/rows.py on the storage package's
helpers) until the enrich jobs produce them. A test data loader, not a fake Bigtable."""

from __future__ import annotations

from collections.abc import Iterable

from eventpipe.core.config import CommonSettings
from eventpipe.core.storage.rows import EventRow
from google.cloud.bigtable.data import BigtableDataClient, RowMutationEntry, SetCell


class RowLoader:
    def __init__(self, common: CommonSettings) -> None:
        self._common = common
        self._client = BigtableDataClient(project=common.bigtable_project)

    def write(self, table: str, rows: Iterable[EventRow]) -> None:
        entries = [
            RowMutationEntry(
                row.key,
                [
                    SetCell(
                        family,
                        qualifier,
                        value,
                        # Bigtable cell timestamps have millisecond granularity.
                        timestamp_micros=(row.timestamp_micros // 1000) * 1000,
                    )
                    for (family, qualifier), value in row.cells.items()
                ],
            )
            for row in rows
        ]
        handle = self._client.get_table(
            self._common.bigtable_instance, self._common.table_prefix + table
        )
        for start in range(0, len(entries), 500):
            handle.bulk_mutate_rows(entries[start : start + 500])

    def close(self) -> None:
        self._client.close()
