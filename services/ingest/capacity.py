"""The bound on in-flight work: events (and their bytes) produced but not yet confirmed.

Every write holds its share until Kafka reports on it, so the memory ingest holds for
unconfirmed events is bounded no matter how many clients push at once.
"""

from __future__ import annotations

import threading
import time


class InFlightLimiter:
    """Counts events and bytes in flight against two ceilings."""

    def __init__(self, max_events: int, max_bytes: int) -> None:
        self.max_events = max_events
        self.max_bytes = max_bytes
        self._events = 0
        self._bytes = 0
        self._changed = threading.Condition()

    @property
    def events(self) -> int:
        return self._events

    @property
    def bytes(self) -> int:
        return self._bytes

    def _fits(self, events: int, nbytes: int) -> bool:
        if self._events == 0:
            # A single batch larger than the ceiling still goes through alone, or it never would.
            return True
        return self._events + events <= self.max_events and self._bytes + nbytes <= self.max_bytes

    def try_acquire(self, events: int, nbytes: int, wait_seconds: float = 0.0) -> bool:
        """Takes capacity, waiting up to ``wait_seconds`` for it; False when it did not fit."""
        deadline = time.monotonic() + wait_seconds
        with self._changed:
            while not self._fits(events, nbytes):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._changed.wait(remaining)
            self._events += events
            self._bytes += nbytes
            return True

    def release(self, events: int, nbytes: int) -> None:
        with self._changed:
            self._events -= events
            self._bytes -= nbytes
            self._changed.notify_all()
