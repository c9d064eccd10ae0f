"""Per-item results of batch writes (events, dimension records): the domain side of
eventpipe.common.v1.ItemResult, shared by every service that answers item by item."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from eventpipe.core.errors import Violation, describe


class ItemStatus(enum.Enum):
    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    REJECTED = "rejected"


@dataclass(slots=True)
class ItemOutcome:
    """The outcome of one item of a batch; ``code`` is a google.rpc.Code name when rejected."""

    index: int
    id: str
    status: ItemStatus
    code: str = ""
    violations: tuple[Violation, ...] = ()
    # Why a rejected item was refused when no field is at fault (a failed write, say).
    detail: str = ""

    @property
    def message(self) -> str:
        """What a person reads about a rejected item: each violation, or the detail."""
        if self.violations:
            return describe(self.violations)
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
