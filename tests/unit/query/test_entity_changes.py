"""The entity-changes listener over a scripted consumer: invalidation, suspension, resumption."""

from __future__ import annotations

import threading
from collections import deque
from typing import Any

from confluent_kafka import KafkaError
from eventpipe.core.config import CommonSettings
from eventpipe.core.entity_changes import EntityChange
from eventpipe.core.waiting import wait_until
from query.adapters.entity_changes import EntityChangeListener
from query.cache import AnswerCache


class Message:
    def __init__(self, value: bytes, offset: int) -> None:
        self._value, self._offset = value, offset

    def error(self) -> None:
        return None

    def value(self) -> bytes:
        return self._value

    def offset(self) -> int:
        return self._offset

    def partition(self) -> int:
        return 0


class Partitions:
    def __init__(self) -> None:
        self.partitions = {0: object()}
        self.error = None


class ScriptedConsumer:
    """Serves queued messages; ``high`` is the partition end the broker reports."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.messages: deque[Message] = deque()
        self.high = 5
        self.reachable = True
        self.assigned: list[Any] = []
        self.lock = threading.Lock()
        self.end_checks = 0  # answered asks for the partition end

    def list_topics(self, topic: str, timeout: float) -> Any:
        class Metadata:
            topics = {topic: Partitions()}

        return Metadata()

    def get_watermark_offsets(self, tp: Any, timeout: float, cached: bool) -> tuple[int, int]:
        if not self.reachable:
            raise RuntimeError("unreachable")
        with self.lock:
            self.end_checks += 1
            return 0, self.high

    def assign(self, partitions: list[Any]) -> None:
        self.assigned = partitions

    def poll(self, timeout: float) -> Message | None:
        with self.lock:
            if self.messages:
                return self.messages.popleft()
        threading.Event().wait(0.005)
        return None

    def close(self) -> None:
        pass

    def produce(self, change: EntityChange) -> None:
        with self.lock:
            self.messages.append(Message(change.encode(), self.high))
            self.high += 1


def start(cache: AnswerCache) -> tuple[EntityChangeListener, ScriptedConsumer]:
    consumers: list[ScriptedConsumer] = []

    def factory(config: dict[str, Any]) -> ScriptedConsumer:
        consumers.append(ScriptedConsumer(config))
        return consumers[0]

    listener = EntityChangeListener(
        CommonSettings(), cache, poll_seconds=0.01, retry_seconds=0.01, consumer_factory=factory
    )
    listener.start()
    wait_until(lambda: listener.live.is_set(), timeout=10, what="listener live")
    return listener, consumers[0]


def make_cache() -> AnswerCache:
    return AnswerCache(
        max_entries=10, max_bytes=10_000, ttl_seconds=60, sizeof=lambda v: 1, suspended=True
    )


def test_the_cache_stays_off_until_the_consumer_is_positioned_at_the_end() -> None:
    cache = make_cache()
    assert cache.suspended
    listener, consumer = start(cache)
    try:
        assert not cache.suspended
        assert [tp.offset for tp in consumer.assigned] == [5]
        assert consumer.config["group.id"].startswith(CommonSettings().topic_prefix)
    finally:
        listener.stop(5)


def test_a_change_drops_the_entitys_cached_answers() -> None:
    cache = make_cache()
    listener, consumer = start(cache)
    try:
        cache.get_or_load(("t", "e", "profile"), lambda: "old")
        consumer.produce(EntityChange.now("t", "e"))
        wait_until(lambda: listener.applied == 1, timeout=10, what="change applied")
        assert cache.get_or_load(("t", "e", "profile"), lambda: "new") == "new"
    finally:
        listener.stop(5)


def test_an_undecodable_change_empties_the_whole_cache() -> None:
    cache = make_cache()
    listener, consumer = start(cache)
    try:
        cache.get_or_load(("t", "e", "profile"), lambda: "old")
        with consumer.lock:
            consumer.messages.append(Message(b"not json", 5))
        wait_until(lambda: cache.stats().entries == 0, timeout=10, what="cache emptied")
        assert not cache.suspended
    finally:
        listener.stop(5)


def test_brokers_down_suspend_the_cache_until_the_consumer_caught_up_again() -> None:
    cache = make_cache()
    listener, consumer = start(cache)
    try:
        cache.get_or_load(("t", "e", "profile"), lambda: "old")
        consumer.reachable = False
        listener._on_error(KafkaError(KafkaError._ALL_BROKERS_DOWN))
        wait_until(lambda: cache.suspended, timeout=10, what="suspended")
        assert cache.stats().entries == 0
        # Back, with a change produced meanwhile: the cache resumes only after reading it.
        with consumer.lock:
            consumer.high += 1
            checks = consumer.end_checks
        consumer.reachable = True
        # Stays suspended although the brokers answer again: the listener saw the new end twice.
        wait_until(
            lambda: consumer.end_checks >= checks + 2, timeout=10, what="the end checked again"
        )
        assert cache.suspended
        with consumer.lock:
            consumer.messages.append(Message(EntityChange.now("t", "e").encode(), 5))
        wait_until(lambda: not cache.suspended, timeout=10, what="resumed")
    finally:
        listener.stop(5)
