"""The plain types the job manager and its engine exchange: counters, cancellation, work.

No protobuf here: the servicer translates the wire messages, the engine takes these.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from enrich.domain.spec import CheckedSpec

log = logging.getLogger(__name__)


@dataclass
class Counters:
    """What a job (or one micro-batch of a stream) read and wrote."""

    read: int = 0
    enriched: int = 0
    unmatched: int = 0
    failed: int = 0

    def add(self, other: Counters) -> None:
        self.read += other.read
        self.enriched += other.enriched
        self.unmatched += other.unmatched
        self.failed += other.failed


class Cancelled(Exception):
    """Raised by an engine when a job's cancel flag stopped it."""


class CancellationToken:
    """Set once when a job is cancelled (or the process stops); the job's thread checks it
    between steps, and callbacks registered with ``on_cancel`` run when it is set."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._callbacks: list[Callable[[], None]] = []

    def cancel(self) -> None:
        with self._lock:
            if self._event.is_set():
                return
            self._event.set()
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            try:
                callback()
            except Exception:
                log.warning("a cancel callback failed", exc_info=True)

    def is_set(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._event.wait(timeout)

    def raise_if_cancelled(self, job_id: str) -> None:
        if self._event.is_set():
            raise Cancelled(job_id)

    def on_cancel(self, callback: Callable[[], None]) -> None:
        """Runs ``callback`` when the token is set (at once if it already is)."""
        with self._lock:
            if not self._event.is_set():
                self._callbacks.append(callback)
                return
        callback()


@dataclass
class BatchWork:
    """One batch run over ``[start_micros, end_micros)``: a batch job or a scheduled window."""

    job_id: str
    tenant_id: str
    spec: CheckedSpec
    start_micros: int
    end_micros: int
    cancelled: CancellationToken = field(default_factory=lambda: CancellationToken())
    on_progress: Callable[[float, Counters], None] = lambda _p, _c: None


@dataclass
class StreamWork:
    job_id: str
    tenant_id: str
    spec: CheckedSpec
    trigger_seconds: float
    on_batch: Callable[[Counters], None]
