"""The answer cache: bounded, thread-safe, single-flight, invalidated per entity.

- Bounds: a ``cachetools.TTLCache`` whose "size" is an estimate of each answer's memory,
  charged at least ``max_bytes / max_entries`` per entry, so both the total estimated bytes and
  the number of entries stay within their bounds (the least recently used entries go first).
- Thread safety: cachetools is not thread-safe; every access happens under one lock, and the
  lock is never held while Bigtable is read.
- Single flight: concurrent misses on one key wait for the one read in flight.
- Invalidation: every key starts with (tenant_id, entity_id); an index from entity to its keys
  drops all of an entity's answers at once. A read that was in flight when its entity was
  invalidated may predate the write, so its result is returned to the requests that already
  waited but never stored, and later requests start a fresh read.
- Suspension: while entity changes cannot be consumed (Kafka unreachable, consumer not yet
  positioned), the cache is emptied and bypassed, because it could not honour its staleness
  bound; reads still go to Bigtable with single flight.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from cachetools import TTLCache
from eventpipe.core.errors import Unavailable

from query import metrics

CacheKey = tuple[Hashable, ...]
"""(tenant_id, entity_id, kind, *parameters)."""
EntityKey = tuple[str, str]
V = TypeVar("V")


def entity_of(key: CacheKey) -> EntityKey:
    return (str(key[0]), str(key[1]))


class _IndexedTTLCache(TTLCache[CacheKey, Any]):
    """A TTLCache that reports every entry it drops by itself (expiry, size eviction)."""

    def __init__(
        self,
        maxsize: int,
        ttl: float,
        getsizeof: Callable[[Any], float],
        timer: Callable[[], float],
        on_dropped: Callable[[CacheKey, bool], None],
    ) -> None:
        super().__init__(maxsize, ttl, timer=timer, getsizeof=getsizeof)
        self._on_dropped = on_dropped

    def expire(self, time: float | None = None) -> list[tuple[CacheKey, Any]]:
        expired = list(super().expire(time))
        for key, _value in expired:
            self._on_dropped(key, False)
        return expired

    def popitem(self) -> tuple[CacheKey, Any]:
        key, value = super().popitem()
        self._on_dropped(key, True)
        return key, value


@dataclass
class _Flight:
    """One read in progress; requests for the same key wait on ``done``."""

    done: threading.Event = field(default_factory=threading.Event)
    value: Any = None
    error: BaseException | None = None
    # Set when the entity was invalidated during the read: the result must not be cached.
    stale: bool = False
    waiters: int = 0


@dataclass(frozen=True)
class CacheStats:
    hits: int
    misses: int
    joins: int
    evictions: int
    expirations: int
    invalidations: int
    invalidated_entries: int
    entries: int
    bytes: float


@dataclass(frozen=True)
class _Entry:
    value: Any
    cost: float


class AnswerCache:
    """Cached answers keyed by (tenant, entity, kind, ...)."""

    def __init__(
        self,
        *,
        max_entries: int,
        max_bytes: int,
        ttl_seconds: float,
        sizeof: Callable[[Any], int],
        wait_timeout_seconds: float = 10.0,
        timer: Callable[[], float] = time.monotonic,
        suspended: bool = False,
    ) -> None:
        self.enabled = max_entries > 0 and max_bytes > 0
        self._sizeof = sizeof
        self._min_cost = max_bytes / max_entries if self.enabled else 0.0
        self._wait_timeout = wait_timeout_seconds
        self._lock = threading.Lock()
        self._cache = _IndexedTTLCache(
            maxsize=max(max_bytes, 1),
            ttl=ttl_seconds,
            getsizeof=lambda entry: entry.cost,
            timer=timer,
            on_dropped=self._dropped,
        )
        self._index: dict[EntityKey, set[CacheKey]] = {}
        self._inflight: dict[CacheKey, _Flight] = {}
        self._suspended = suspended
        self._hits = self._misses = self._joins = 0
        self._evictions = self._expirations = 0
        self._invalidations = self._invalidated_entries = 0
        metrics.CACHE_SUSPENDED.set(1 if suspended else 0)

    # -- called with the lock held (by the TTLCache's own methods)
    def _dropped(self, key: CacheKey, evicted: bool) -> None:
        self._unindex(key)
        if evicted:
            self._evictions += 1
            metrics.CACHE_EVICTIONS.inc()
        else:
            self._expirations += 1
            metrics.CACHE_EXPIRATIONS.inc()

    def _unindex(self, key: CacheKey) -> None:
        entity = entity_of(key)
        keys = self._index.get(entity)
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._index[entity]

    def _publish_size(self) -> None:
        metrics.CACHE_ENTRIES.set(len(self._cache))
        metrics.CACHE_BYTES.set(self._cache.currsize)

    # -- public API
    def get_or_load(self, key: CacheKey, load: Callable[[], V]) -> V:
        """The cached answer for ``key``, or ``load()``'s, read once for concurrent misses.

        An exception from ``load`` reaches every request waiting on it and is never cached.
        """
        kind = str(key[2])
        with self._lock:
            if self.enabled and not self._suspended:
                entry = self._cache.get(key)
                if entry is not None:
                    self._hits += 1
                    metrics.CACHE_HITS.labels(kind).inc()
                    return entry.value  # type: ignore[no-any-return]
            self._misses += 1
            metrics.CACHE_MISSES.labels(kind).inc()
            flight = self._inflight.get(key)
            leader = flight is None
            if flight is None:
                flight = _Flight()
                self._inflight[key] = flight
            else:
                flight.waiters += 1
                self._joins += 1
                metrics.CACHE_SHARED_READS.labels(kind).inc()
        if not leader:
            return self._wait(flight)
        try:
            value = load()
        except BaseException as exc:
            flight.error = exc
            with self._lock:
                if self._inflight.get(key) is flight:
                    del self._inflight[key]
            flight.done.set()
            raise
        flight.value = value
        with self._lock:
            if self._inflight.get(key) is flight:
                del self._inflight[key]
            if self.enabled and not self._suspended and not flight.stale:
                self._store(key, value)
        flight.done.set()
        return value

    def _wait(self, flight: _Flight) -> Any:
        if not flight.done.wait(self._wait_timeout):
            raise Unavailable(
                "timed out waiting for a concurrent read of the same data", retry_after_seconds=1
            )
        if flight.error is not None:
            raise flight.error
        return flight.value

    def _store(self, key: CacheKey, value: Any) -> None:
        cost = max(float(self._sizeof(value)), self._min_cost)
        if cost > self._cache.maxsize:
            return  # larger than the whole cache: serve it, never keep it
        self._cache[key] = _Entry(value, cost)
        self._index.setdefault(entity_of(key), set()).add(key)
        self._publish_size()

    def invalidate_entity(self, tenant_id: str, entity_id: str) -> int:
        """Drops every answer about the entity (and poisons reads in flight); returns the count."""
        entity = (tenant_id, entity_id)
        with self._lock:
            keys = self._index.pop(entity, set())
            for key in keys:
                self._cache.pop(key, None)
            for key, flight in list(self._inflight.items()):
                if entity_of(key) == entity:
                    flight.stale = True
                    del self._inflight[key]
            self._invalidations += 1
            self._invalidated_entries += len(keys)
            self._publish_size()
        metrics.CACHE_INVALIDATIONS.inc()
        metrics.CACHE_INVALIDATED_ENTRIES.inc(len(keys))
        return len(keys)

    def clear(self) -> None:
        """Drops every answer (and poisons reads in flight)."""
        with self._lock:
            self._clear_locked()

    def suspend(self) -> None:
        """Empties the cache and bypasses it until ``resume``."""
        with self._lock:
            self._suspended = True
            self._clear_locked()
        metrics.CACHE_SUSPENDED.set(1)

    def resume(self) -> None:
        with self._lock:
            self._suspended = False
        metrics.CACHE_SUSPENDED.set(0)

    @property
    def suspended(self) -> bool:
        return self._suspended

    def _clear_locked(self) -> None:
        self._cache.clear()
        self._index.clear()
        for flight in self._inflight.values():
            flight.stale = True
        self._inflight.clear()
        self._publish_size()

    def waiters(self, key: CacheKey) -> int:
        """Requests currently waiting on the read of ``key`` in flight (for tests and probes)."""
        with self._lock:
            flight = self._inflight.get(key)
            return flight.waiters if flight is not None else 0

    def stats(self) -> CacheStats:
        with self._lock:
            self._cache.expire()
            return CacheStats(
                hits=self._hits,
                misses=self._misses,
                joins=self._joins,
                evictions=self._evictions,
                expirations=self._expirations,
                invalidations=self._invalidations,
                invalidated_entries=self._invalidated_entries,
                entries=len(self._cache),
                bytes=float(self._cache.currsize),
            )
