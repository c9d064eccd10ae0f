"""Streaming enrichment reads the raw topic exactly as the store consumer does: a message the
store dead-letters (a key that disagrees with the value, an out-of-range timestamp attribute, a
tenant header that disagrees, garbage bytes, an event_time far beyond its ingest_time) is never
enriched, while a good message produced after them is."""

from __future__ import annotations

import time
from typing import Any

import pytest
from confluent_kafka import Producer
from enrich.adapters.spark_engine import SparkEngine
from eventpipe.common.v1 import event_pb2
from eventpipe.core.kafka import producer_config
from eventpipe.core.storage.keys import row_key_for_event
from eventpipe.core.storage.tables import ENRICHED_EVENTS_TABLE
from eventpipe.core.storage.times import micros, timestamp_from_micros
from eventpipe.core.topic_contract import (
    HEADER_TENANT,
    PoisonMessage,
    decode_raw_event,
    message_headers,
    message_key,
)
from eventpipe.core.validation import EventLimits
from eventpipe.core.waiting import wait_until
from google.cloud.bigtable.table import Table

from tests.integration.enrich import dataset
from tests.integration.enrich.conftest import recent, start_test_stream, write_dimensions
from tests.integration.enrich.test_batch_enrichment import dump

pytestmark = [pytest.mark.abuse]

Message = tuple[bytes | None, bytes, list[tuple[str, bytes]]]


def poison_messages(good: event_pb2.Event) -> dict[str, Message]:
    """Messages of ``good``'s tenant, each breaking one rule of the topic contract."""
    tenant = good.tenant_id

    def variant(event_id: str) -> event_pb2.Event:
        event = event_pb2.Event()
        event.CopyFrom(good)
        event.event_id = event_id
        return event

    wrong_key = variant("poison-key")
    out_of_range = variant("poison-timestamp")
    out_of_range.attributes["when"].timestamp_value.seconds = 10**13
    wrong_header = variant("poison-header")
    future = variant("poison-future")
    future.event_time.CopyFrom(timestamp_from_micros(micros(good.ingest_time) + 3600 * 1_000_000))
    return {
        "a key that disagrees with the value": (
            message_key(tenant, "someone-else"),
            wrong_key.SerializeToString(),
            message_headers(wrong_key),
        ),
        "an out-of-range timestamp attribute": (
            message_key(tenant, good.entity_id),
            out_of_range.SerializeToString(),
            message_headers(out_of_range),
        ),
        "a tenant header that disagrees": (
            message_key(tenant, good.entity_id),
            wrong_header.SerializeToString(),
            [
                (HEADER_TENANT, b"another-tenant") if name == HEADER_TENANT else (name, value)
                for name, value in message_headers(wrong_header)
            ],
        ),
        "an event_time an hour after its ingest_time": (
            message_key(tenant, good.entity_id),
            future.SerializeToString(),
            message_headers(future),
        ),
        "garbage bytes": (message_key(tenant, good.entity_id), b"\xff\x00garbage", []),
    }


def test_a_message_the_store_dead_letters_is_never_enriched_while_a_good_one_is(
    engine: SparkEngine,
    tables: dict[str, Table],
    common_settings: Any,
    isolation: Any,
    tmp_path: Any,
) -> None:
    data = recent(dataset.generate(isolation.tenant_id, events=1, seed=5))
    write_dimensions(tables, data)
    good = data.events[0]
    poison = poison_messages(good)
    now = time.time_ns() // 1000
    for key, value, headers in poison.values():
        # Exactly what the store consumer refuses (and dead-letters): the same function.
        with pytest.raises(PoisonMessage):
            decode_raw_event(key, value, headers, now // 1000, EventLimits(), now)

    batches: list[Any] = []
    handle = start_test_stream(
        engine, common_settings, isolation.tenant_id, tmp_path / "checkpoint", batches.append
    )
    try:
        wait_until(handle.started, timeout=180, what="first micro-batch")
        producer = Producer(producer_config(common_settings))
        for key, value, headers in poison.values():
            producer.produce(common_settings.raw_topic, key=key, value=value, headers=headers)
        producer.produce(
            common_settings.raw_topic,
            key=message_key(good.tenant_id, good.entity_id),
            value=good.SerializeToString(),
            headers=message_headers(good),
        )
        assert producer.flush(30) == 0

        good_key = row_key_for_event(
            good.tenant_id, good.entity_id, micros(good.event_time), good.event_id
        )
        wait_until(
            lambda: good_key in dump(tables[ENRICHED_EVENTS_TABLE]),
            timeout=120,
            what="the good event enriched",
        )
        # The poison messages came first: their micro-batch has counted them by now.
        wait_until(
            lambda: sum(b.failed for b in batches) == len(poison),
            timeout=60,
            what="poison messages counted",
        )
    finally:
        handle.stop()

    enriched = dump(tables[ENRICHED_EVENTS_TABLE])
    assert set(enriched) == {good_key}
    assert sum(b.read for b in batches) == 1
