"""What ingest answers per event: the domain side of eventpipe.common.v1.ItemResult."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from eventpipe.core.results import ItemOutcome, ItemStatus

# Codes of rejected items, as google.rpc.Code names; the servicer turns a name into the
# ItemResult.code enum value, metrics use it as a label.
INVALID_ARGUMENT = "INVALID_ARGUMENT"
UNAVAILABLE = "UNAVAILABLE"
RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"


@dataclass
class BatchOutcome:
    """One outcome per event, in request order."""

    items: list[ItemOutcome] = field(default_factory=list)

    def count(self, status: ItemStatus) -> int:
        return sum(1 for item in self.items if item.status is status)

    @property
    def accepted(self) -> int:
        return self.count(ItemStatus.ACCEPTED)

    @property
    def duplicates(self) -> int:
        return self.count(ItemStatus.DUPLICATE)

    @property
    def rejected(self) -> int:
        return self.count(ItemStatus.REJECTED)

    def tally(self) -> Counter[tuple[str, str]]:
        """Counts by (status, reason): one metric increment per distinct pair."""
        return Counter((item.status.value, item.reason) for item in self.items)
