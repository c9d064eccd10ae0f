"""What ingest answers per event: the domain side of eventpipe.common.v1.ItemResult."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from eventpipe.core.results import ItemOutcome, ItemStatus

# Codes of rejected items, as google.rpc.Code names; the servicer turns a name into the
# ItemResult.code enum value, metrics use it as a label.
INVALID_ARGUMENT = "INVALID_ARGUMENT"
UNAVAILABLE = "UNAVAILABLE"
RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"


@dataclass
class BatchOutcome:
    """One outcome per event, in request order.

    Accepted is the common case, so it is implied: an event whose index is not in ``refused``
    (duplicates and rejections) was accepted, and answering it costs no object of its own.
    """

    ids: Sequence[str]
    """The event id of each request index."""
    refused: Mapping[int, ItemOutcome] = field(default_factory=dict)
    accepted: int = field(init=False)
    duplicates: int = field(init=False)
    rejected: int = field(init=False)

    @classmethod
    def of_items(cls, items: Sequence[ItemOutcome]) -> BatchOutcome:
        """A batch from its items, one per index in order."""
        return cls(
            [item.id for item in items],
            {item.index: item for item in items if item.status is not ItemStatus.ACCEPTED},
        )

    def __post_init__(self) -> None:
        self.duplicates = sum(
            1 for item in self.refused.values() if item.status is ItemStatus.DUPLICATE
        )
        self.rejected = len(self.refused) - self.duplicates
        self.accepted = len(self.ids) - len(self.refused)

    def item(self, index: int) -> ItemOutcome:
        refused = self.refused.get(index)
        return refused or ItemOutcome(index, self.ids[index], ItemStatus.ACCEPTED)

    @property
    def items(self) -> list[ItemOutcome]:
        """Every outcome as an object (tests, single events); the servicer reads ``ids`` and
        ``refused`` instead."""
        return [self.item(index) for index in range(len(self.ids))]

    def tally(self) -> Counter[tuple[str, str]]:
        """Counts by (status, reason): one metric increment per distinct pair."""
        counts = Counter((item.status.value, item.reason) for item in self.refused.values())
        if self.accepted:
            counts[(ItemStatus.ACCEPTED.value, "")] = self.accepted
        return counts
