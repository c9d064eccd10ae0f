"""The port the query logic reads through; adapters/bigtable_store.py is the real one."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from eventpipe.core.storage.rows import Cells


class EventView(enum.Enum):
    """Which table events are read from."""

    ENRICHED = "enriched"
    RAW = "raw"


@dataclass(frozen=True)
class StoredRow:
    """One row: its key and the latest cell of each column."""

    key: bytes
    cells: Cells


class EntityStore(Protocol):
    """Reads of the tables enrichment and the store write; keys come from eventpipe.core.storage.

    Raises eventpipe.core.errors.Unavailable when the backend cannot answer.
    """

    def read_profile(self, key: bytes) -> Cells | None:
        """The entity profile row, or None when it does not exist."""
        ...

    def scan_events(
        self,
        view: EventView,
        start_key: bytes,
        end_key: bytes,
        *,
        start_inclusive: bool,
        limit: int,
        event_types: Sequence[str],
    ) -> list[StoredRow]:
        """Up to ``limit`` event rows in key order within the range, of the given types
        (all when empty); the type filter runs before the limit."""
        ...

    def scan_metrics(self, start_key: bytes, end_key: bytes) -> list[StoredRow]:
        """Every aggregate row in [start_key, end_key), in key order."""
        ...
