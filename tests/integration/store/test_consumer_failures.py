"""Poison messages go to the dead-letter topic without blocking; a Bigtable outage pauses
the consumer without committing, and a fresh emulator gets the in-flight events."""

from __future__ import annotations

import time
from typing import Any

from eventpipe.core import topic_contract
from eventpipe.core.config import CommonSettings
from eventpipe.core.waiting import wait_until
from eventpipe.stack.components import BigtableEmulator
from eventpipe.store.v1 import store_pb2

from tests.conftest import Isolation
from tests.integration.store.conftest import (
    assert_each_exactly_once,
    consumer_status,
    contract_message,
    dead_letters,
    make_event,
    produce,
    produce_events,
    stored_event_cells,
)


def _headers(message: Any) -> dict[str, bytes]:
    return dict(message.headers() or [])


def test_poison_messages_land_in_the_dead_letter_topic_while_later_events_are_stored(
    common_settings: CommonSettings, store_stub: Any, isolation: Isolation
) -> None:
    tenant = isolation.tenant_id
    before = [make_event(tenant, i, entity_count=1) for i in range(100)]
    after = [make_event(tenant, i, entity_count=1) for i in range(100, 200)]
    key = topic_contract.message_key(tenant, "user-0")  # same key: same partition as the events
    invalid = make_event(tenant, 999, entity_count=1)
    invalid.event_id = "has spaces"  # a direct producer's bad event
    too_old = make_event(tenant, 998, entity_count=1)
    too_old.event_time.seconds -= 400 * 86400
    poison = [
        (key, b"\xff\x00 not a protobuf", []),
        contract_message(invalid),
        contract_message(too_old),
    ]
    produce_events(common_settings, before)
    produce(common_settings, poison)
    produce_events(common_settings, after)

    letters = dead_letters(common_settings, expected=3)
    assert len(letters) == 3
    errors = [_headers(m)[topic_contract.HEADER_DLQ_ERROR].decode() for m in letters]
    assert "not a serialized eventpipe.common.v1.Event" in errors[0]
    assert "event_id" in errors[1]
    assert "event_time" in errors[2]
    for message in letters:
        topic, partition, offset = (
            _headers(message)[topic_contract.HEADER_DLQ_SOURCE].decode().rsplit("/", 2)
        )
        assert topic == common_settings.raw_topic
        assert int(partition) >= 0 and int(offset) >= 100
    assert letters[0].value() == b"\xff\x00 not a protobuf"  # the original bytes, unchanged

    wait_until(
        lambda: (
            all(p.lag == 0 for p in consumer_status(store_stub).partitions)
            and consumer_status(store_stub).rows_written == 200
        ),
        timeout=60,
        what="every message to be handled",
    )
    assert consumer_status(store_stub).dead_lettered_count == 3
    assert_each_exactly_once(
        stored_event_cells(common_settings), {e.event_id for e in before + after}
    )


def _committed_total(stub: Any) -> int:
    return sum(p.committed_offset for p in consumer_status(stub).partitions)


def test_bigtable_outage_pauses_without_committing_and_a_fresh_emulator_gets_the_in_flight_events(
    common_settings: CommonSettings,
    store_stub: Any,
    isolation: Isolation,
    bigtable_emulator: BigtableEmulator,
) -> None:
    tenant = isolation.tenant_id
    stored_before = [make_event(tenant, i) for i in range(300)]
    produce_events(common_settings, stored_before)
    wait_until(lambda: _committed_total(store_stub) == 300, timeout=60, what="the first events")

    bigtable_emulator.stop()
    try:
        in_flight = [make_event(tenant, i) for i in range(300, 1300)]
        produce_events(common_settings, in_flight)
        wait_until(
            lambda: consumer_status(store_stub).state == store_pb2.CONSUMER_STATE_PAUSED,
            timeout=60,
            what="the consumer to pause",
        )
        status = consumer_status(store_stub)
        assert "mutate_rows" in status.last_error
        assert _committed_total(store_stub) == 300
        # Still paused and uncommitted after several retries.
        retries_seen = time.monotonic() + 3
        wait_until(lambda: time.monotonic() > retries_seen, timeout=10, what="a few retries")
        assert consumer_status(store_stub).state == store_pb2.CONSUMER_STATE_PAUSED
        assert _committed_total(store_stub) == 300
    finally:
        bigtable_emulator.start()  # a fresh emulator: no tables, no rows

    wait_until(
        lambda: (
            _committed_total(store_stub) == 1300
            and consumer_status(store_stub).state == store_pb2.CONSUMER_STATE_RUNNING
        ),
        timeout=120,
        what="the consumer to resume and commit",
    )
    # The emulator lost what was committed before; everything in flight is there, once.
    assert_each_exactly_once(stored_event_cells(common_settings), {e.event_id for e in in_flight})
