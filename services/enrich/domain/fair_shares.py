"""Fair shares of one enrich process: the quotas and the round-robin slots that run batch
jobs and scheduled windows (streams run on threads of their own, outside the slots)."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Quotas:
    """Fair shares of one enrich process (see docs/enrich.md for the variables)."""

    max_running_jobs: int = 2  # batch jobs and scheduled windows running at once
    tenant_max_running_jobs: int = 1  # of those slots, held by one tenant at once
    tenant_max_batch_jobs: int = 4  # a tenant's batch jobs pending or running
    tenant_max_scheduled_jobs: int = 50  # a tenant's active schedules
    max_streams: int = 8  # streaming jobs running at once, each on a thread of its own
    tenant_max_streams: int = 2  # a tenant's streaming jobs

    def __post_init__(self) -> None:
        if min(self.max_running_jobs, self.tenant_max_running_jobs, self.max_streams) < 1:
            raise ValueError("job and stream slots must be at least 1")


class FairSlots:
    """``slots`` worker threads running queued work, round-robin across tenants, a tenant
    holding at most ``per_tenant`` of them, so one tenant's queue never starves another's."""

    def __init__(self, slots: int, per_tenant: int, name: str = "enrich-job") -> None:
        self.per_tenant = per_tenant
        self._cond = threading.Condition()
        self._queues: dict[str, deque[Callable[[], None]]] = {}
        self._turns: deque[str] = deque()  # tenants with queued work, next turn first
        self._running: Counter[str] = Counter()
        self._closed = False
        self._threads = [
            threading.Thread(target=self._serve, name=f"{name}-{n}", daemon=True)
            for n in range(slots)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, tenant_id: str, work: Callable[[], None]) -> None:
        with self._cond:
            if self._closed:
                return
            queue = self._queues.setdefault(tenant_id, deque())
            if not queue:
                self._turns.append(tenant_id)
            queue.append(work)
            self._cond.notify()

    def running(self, tenant_id: str) -> int:
        with self._cond:
            return self._running[tenant_id]

    def _take(self) -> tuple[str, Callable[[], None]] | None:
        for _ in range(len(self._turns)):
            tenant_id = self._turns.popleft()
            queue = self._queues[tenant_id]
            if self._running[tenant_id] >= self.per_tenant:
                self._turns.append(tenant_id)
                continue
            work = queue.popleft()
            if queue:
                self._turns.append(tenant_id)  # its next item waits for the others' turns
            else:
                del self._queues[tenant_id]
            return tenant_id, work
        return None

    def _serve(self) -> None:
        while True:
            with self._cond:
                taken = self._take()
                while taken is None:
                    if self._closed:
                        return
                    self._cond.wait()
                    taken = self._take()
                tenant_id, work = taken
                self._running[tenant_id] += 1
            try:
                work()
            except Exception:
                log.exception("job work escaped its handler")
            finally:
                with self._cond:
                    self._running[tenant_id] -= 1
                    self._cond.notify_all()

    def close(self, timeout: float) -> None:
        """Drops queued work and waits up to ``timeout`` for running work to end."""
        with self._cond:
            self._closed = True
            self._queues.clear()
            self._turns.clear()
            self._cond.notify_all()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
