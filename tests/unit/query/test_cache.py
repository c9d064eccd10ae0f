"""The answer cache: bounds, TTL, single flight, invalidation and suspension."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest
from eventpipe.core.errors import Unavailable
from eventpipe.core.waiting import wait_until
from query.cache import AnswerCache


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_cache(
    *,
    max_entries: int = 100,
    max_bytes: int = 1_000_000,
    ttl: float = 60.0,
    clock: Callable[[], float] | None = None,
    sizeof: Callable[[object], int] = lambda value: 10,
    wait: float = 10.0,
) -> AnswerCache:
    return AnswerCache(
        max_entries=max_entries,
        max_bytes=max_bytes,
        ttl_seconds=ttl,
        sizeof=sizeof,
        wait_timeout_seconds=wait,
        timer=clock or FakeClock(),
    )


class Loader:
    """Counts calls; returns "value-<n>"."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        return f"value-{self.calls}"


def test_a_second_lookup_is_served_from_the_cache() -> None:
    cache, load = make_cache(), Loader()
    key = ("t", "e", "profile")
    assert cache.get_or_load(key, load) == "value-1"
    assert cache.get_or_load(key, load) == "value-1"
    assert load.calls == 1
    stats = cache.stats()
    assert (stats.hits, stats.misses) == (1, 1)


def test_an_answer_is_read_again_once_its_ttl_ran_out() -> None:
    clock = FakeClock()
    cache, load = make_cache(ttl=5, clock=clock), Loader()
    key = ("t", "e", "profile")
    cache.get_or_load(key, load)
    clock.now += 6
    assert cache.get_or_load(key, load) == "value-2"
    assert cache.stats().expirations == 1


def test_the_entry_bound_evicts_the_least_recently_used_answer() -> None:
    cache = make_cache(max_entries=3, max_bytes=3000)
    for i in range(3):
        cache.get_or_load(("t", f"e{i}", "profile"), lambda: "x")
    cache.get_or_load(("t", "e0", "profile"), lambda: "fresh")  # e0 is now recently used
    cache.get_or_load(("t", "e3", "profile"), lambda: "x")
    stats = cache.stats()
    assert (stats.entries, stats.evictions) == (3, 1)
    assert cache.get_or_load(("t", "e0", "profile"), lambda: "reloaded") == "x"
    assert cache.get_or_load(("t", "e1", "profile"), lambda: "reloaded") == "reloaded"


def test_the_memory_bound_holds_with_large_answers() -> None:
    cache = make_cache(max_entries=1000, max_bytes=10_000, sizeof=lambda value: 4000)
    for i in range(5):
        cache.get_or_load(("t", f"e{i}", "events"), lambda: "big")
    stats = cache.stats()
    assert stats.entries == 2
    assert stats.bytes <= 10_000
    assert stats.evictions == 3


def test_an_answer_larger_than_the_whole_cache_is_served_but_not_kept() -> None:
    cache, load = make_cache(max_bytes=1000, sizeof=lambda value: 5000), Loader()
    key = ("t", "e", "events")
    assert cache.get_or_load(key, load) == "value-1"
    assert cache.get_or_load(key, load) == "value-2"
    assert cache.stats().entries == 0


def test_invalidating_an_entity_drops_all_its_answers_and_only_its_own() -> None:
    cache = make_cache()
    for kind in ("profile", "events", "metrics"):
        cache.get_or_load(("t", "e", kind), lambda: "old")
    cache.get_or_load(("t", "other", "profile"), lambda: "kept")
    cache.get_or_load(("t2", "e", "profile"), lambda: "kept")
    assert cache.invalidate_entity("t", "e") == 3
    assert cache.get_or_load(("t", "e", "profile"), lambda: "new") == "new"
    assert cache.get_or_load(("t", "other", "profile"), lambda: "new") == "kept"
    assert cache.get_or_load(("t2", "e", "profile"), lambda: "new") == "kept"
    assert cache.stats().invalidations == 1


def test_concurrent_misses_on_one_key_make_a_single_read() -> None:
    cache = make_cache()
    key = ("t", "e", "profile")
    release = threading.Event()
    calls = 0

    def slow_load() -> str:
        nonlocal calls
        calls += 1
        release.wait(10)
        return "value"

    requests = 32
    with ThreadPoolExecutor(requests) as pool:
        futures = [pool.submit(cache.get_or_load, key, slow_load) for _ in range(requests)]
        wait_until(lambda: cache.waiters(key) == requests - 1, timeout=10, what="all waiting")
        release.set()
        results = [f.result(timeout=10) for f in futures]
    assert results == ["value"] * requests
    assert calls == 1
    assert cache.stats().joins == requests - 1


def test_a_failed_read_reaches_every_waiter_and_is_not_cached() -> None:
    cache = make_cache()
    key = ("t", "e", "profile")
    release = threading.Event()

    def failing_load() -> str:
        release.wait(10)
        raise Unavailable("down")

    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(cache.get_or_load, key, failing_load) for _ in range(4)]
        wait_until(lambda: cache.waiters(key) == 3, timeout=10, what="all waiting")
        release.set()
        for future in futures:
            with pytest.raises(Unavailable):
                future.result(timeout=10)
    assert cache.get_or_load(key, lambda: "recovered") == "recovered"


def test_a_read_in_flight_when_its_entity_changes_is_not_cached() -> None:
    cache = make_cache()
    key = ("t", "e", "profile")
    started, release = threading.Event(), threading.Event()

    def slow_old_read() -> str:
        started.set()
        release.wait(10)
        return "read-before-the-write"

    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(cache.get_or_load, key, slow_old_read)
        started.wait(10)
        cache.invalidate_entity("t", "e")
        # A request after the invalidation does not join the older read.
        assert cache.get_or_load(key, lambda: "after-the-write") == "after-the-write"
        release.set()
        assert future.result(timeout=10) == "read-before-the-write"
    assert cache.get_or_load(key, lambda: "unexpected") == "after-the-write"


def test_a_waiter_gives_up_with_unavailable_after_its_deadline() -> None:
    cache = make_cache(wait=0.05)
    key = ("t", "e", "profile")
    release = threading.Event()
    with ThreadPoolExecutor(1) as pool:
        leader = pool.submit(cache.get_or_load, key, lambda: release.wait(10) and "late")
        wait_until(lambda: key in cache._inflight, timeout=10, what="read in flight")
        with pytest.raises(Unavailable):
            cache.get_or_load(key, lambda: "never")
        release.set()
        leader.result(timeout=10)


def test_a_suspended_cache_reads_every_time_and_keeps_nothing() -> None:
    cache, load = make_cache(), Loader()
    key = ("t", "e", "profile")
    cache.get_or_load(key, load)
    cache.suspend()
    assert cache.stats().entries == 0
    assert cache.get_or_load(key, load) == "value-2"
    assert cache.get_or_load(key, load) == "value-3"
    cache.resume()
    assert cache.get_or_load(key, load) == "value-4"
    assert cache.get_or_load(key, load) == "value-4"


def test_a_cache_with_no_room_is_off() -> None:
    cache, load = make_cache(max_entries=0), Loader()
    key = ("t", "e", "profile")
    cache.get_or_load(key, load)
    assert cache.get_or_load(key, load) == "value-2"
