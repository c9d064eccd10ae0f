"""What ingest answers per event: the domain side of eventpipe.common.v1.ItemResult."""

from __future__ import annotations

import enum
from collections import Counter
from dataclasses import dataclass, field

from eventpipe.core.errors import Violation

# Codes of rejected items, as google.rpc.Code names; the servicer turns a name into the
# ItemResult.code enum value, metrics use it as a label.
INVALID_ARGUMENT = "INVALID_ARGUMENT"
UNAVAILABLE = "UNAVAILABLE"
RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"


class ItemStatus(enum.Enum):
    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    REJECTED = "rejected"


@dataclass(slots=True)
class ItemOutcome:
    """The outcome of one event of a batch."""

    index: int
    id: str
    status: ItemStatus
    code: str = ""
    violations: tuple[Violation, ...] = ()
    detail: str = ""

    @property
    def message(self) -> str:
        """What a person reads about a rejected item: each violation, or the detail."""
        if self.violations:
            return "; ".join(f"{v.field}: {v.description}" for v in self.violations)
        return self.detail

    @property
    def reason(self) -> str:
        """A low-cardinality reason for metrics and summaries: the code, and the first field."""
        if self.status is not ItemStatus.REJECTED:
            return ""
        if self.violations:
            # attributes[price] -> attributes: the key is the client's, the label is ours.
            first = self.violations[0].field.split("[", 1)[0]
            return f"{self.code}:{first}"
        return self.code


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
