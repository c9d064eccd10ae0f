"""The small interfaces the store's domain logic needs from Bigtable and Kafka.

Adapters in ``store.adapters`` implement them against the real systems; unit tests use fakes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from eventpipe.core.storage.rows import Cells, EventRow

# Codes worth retrying as they are: the dependency is (temporarily) unable to take the write.
# NOT_FOUND is here because a table that vanished (a fresh emulator, a deleted table) is
# recreated before the retry. Everything else is "permanent" for the row (see RowFailure).
RETRYABLE_CODES = frozenset(
    {
        "UNAVAILABLE",
        "DEADLINE_EXCEEDED",
        "ABORTED",
        "RESOURCE_EXHAUSTED",
        "INTERNAL",
        "UNKNOWN",
        "CANCELLED",
        "NOT_FOUND",
        "UNAUTHENTICATED",
        "PERMISSION_DENIED",
    }
)


@dataclass(frozen=True)
class RowFailure:
    """One row of a write that Bigtable did not confirm."""

    index: int
    code: str
    message: str

    @property
    def retryable(self) -> bool:
        return self.code in RETRYABLE_CODES


class RowWriter(Protocol):
    """Writes whole rows with ``mutate_rows``; reports the rows that failed."""

    def write_rows(
        self, table: str, rows: Sequence[EventRow], *, replace: bool = False
    ) -> list[RowFailure]:
        """Writes ``rows`` to ``table`` (name without prefix); returns the failed ones.

        ``replace`` deletes each row's existing cells first, in the same atomic row mutation.
        A call that fails as a whole reports every row as failed; it never raises.
        """
        ...

    def ensure_schema(self) -> None:
        """Creates missing tables and families (after a table vanished)."""
        ...


@dataclass(frozen=True)
class StoredRow:
    key: bytes
    cells: Cells


class RowReader(Protocol):
    """Reads rows of a key range in key order."""

    def read_range(
        self, table: str, start_key: bytes, end_key: bytes, limit: int
    ) -> list[StoredRow]:
        """Rows with start_key <= key < end_key, at most ``limit``; raises on failure."""
        ...


class KeyReader(Protocol):
    """Reads rows by key (the consumer's idempotency index lookups)."""

    def read_keys(self, table: str, keys: Sequence[bytes]) -> list[StoredRow]:
        """The rows of ``keys`` that exist, in key order; raises on failure."""
        ...
