"""What the consumer daemon reports about itself (GetConsumerStatus, metrics)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class ConsumerState(enum.Enum):
    RUNNING = "running"
    PAUSED = "paused"
    STOPPED = "stopped"


@dataclass(frozen=True)
class PartitionPosition:
    topic: str
    partition: int
    committed_offset: int
    high_watermark: int

    @property
    def lag(self) -> int:
        return max(0, self.high_watermark - self.committed_offset)


@dataclass(frozen=True)
class ConsumerStatus:
    state: ConsumerState
    partitions: list[PartitionPosition] = field(default_factory=list)
    rows_written: int = 0
    dead_lettered: int = 0
    last_error: str = ""
