"""`eventpipe dlq list|replay` on real Kafka with a real store consumer: poison messages produced
into the raw topic are dead-lettered by the store, listed by tenant and reason, fixed through
a file and replayed; replaying twice stores the event once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition
from eventpipe.common.v1 import event_pb2
from eventpipe.core import topic_contract
from eventpipe.core.config import CommonSettings
from eventpipe.core.kafka import consumer_config, producer_config
from eventpipe.core.storage.times import timestamp_from_micros
from eventpipe.core.waiting import wait_until

from tests.conftest import Isolation
from tests.integration.store.conftest import (
    assert_each_exactly_once,
    consumer_status,
    contract_message,
    dead_letters,
    make_event,
    produce,
    stored_event_cells,
)


def _event(tenant_id: str, event_id: str, entity_id: str) -> event_pb2.Event:
    event = make_event(tenant_id, 1)
    event.event_id, event.entity_id = event_id, entity_id
    return event


def _dlq(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "eventpipe.cli.main", "dlq", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _json_lines(result: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def _raw_topic_ends(common: CommonSettings) -> dict[int, int]:
    consumer = Consumer(consumer_config(common, f"{common.topic_prefix}ends"))
    try:
        partitions = consumer.list_topics(common.raw_topic, timeout=10).topics[common.raw_topic]
        return {
            p: consumer.get_watermark_offsets(TopicPartition(common.raw_topic, p), timeout=10)[1]
            for p in partitions.partitions
        }
    finally:
        consumer.close()


def _wait_consumed_to_end(common: CommonSettings, store_stub: Any) -> None:
    """Until the store committed every raw-topic message produced so far."""
    ends = _raw_topic_ends(common)

    def committed() -> bool:
        done = {p.partition: p.committed_offset for p in consumer_status(store_stub).partitions}
        return all(done.get(partition, -1) >= end for partition, end in ends.items())

    wait_until(committed, timeout=90, what="the store to commit the raw topic to its end")


def test_poison_messages_are_listed_by_tenant_and_reason_then_fixed_and_replayed_once(
    common_settings: CommonSettings,
    store_stub: Any,
    isolation: Isolation,
    service_env: dict[str, str],
    tmp_path: Path,
) -> None:
    tenant, other = isolation.tenant_id, f"{isolation.tenant_id}-b"
    env = {**os.environ, **service_env, "EVENTPIPE_RUN_DIR": str(tmp_path / "run")}
    valid = _event(tenant, "ok-1", "u1")
    to_fix = _event(tenant, "fix-me", "u2")
    bad_type = _event(tenant, "bad-type", "u3")
    bad_type.event_type = "Not A Type"
    others = _event(other, "other-1", "u1")
    key, value, headers = contract_message(to_fix)
    messages = [
        contract_message(valid),
        (topic_contract.message_key(tenant, "someone-else"), value, headers),  # wrong key
        (
            topic_contract.message_key(tenant, "u4"),
            b"\xff\xfe not a protobuf",
            [(topic_contract.HEADER_TENANT, tenant.encode())],
        ),
        contract_message(bad_type),
        (b"x#y", others.SerializeToString(), topic_contract.message_headers(others)),
    ]
    assert produce(common_settings, messages) == len(messages)
    assert len(dead_letters(common_settings, 4)) >= 4

    listed = _json_lines(_dlq(env, "list", "--tenant", tenant, "--json"))
    assert sorted(letter["reason_class"] for letter in listed) == [
        "invalid-event",
        "key",
        "undecodable",
    ]
    assert {letter["tenant_id"] for letter in listed} == {tenant}
    assert all(letter["source"].startswith(common_settings.raw_topic + "/") for letter in listed)
    undecodable = next(x for x in listed if x["reason_class"] == "undecodable")

    by_class = _json_lines(_dlq(env, "list", "--tenant", tenant, "--reason-class", "key", "--json"))
    assert [(x["event_id"], x["tenant_id"]) for x in by_class] == [("fix-me", tenant)]
    assert _json_lines(_dlq(env, "list", "--tenant", other, "--json"))[0]["event_id"] == "other-1"

    table = _dlq(env, "list", "--tenant", tenant, "--reason", "EVENT_TYPE")
    assert table.returncode == 0, table.stderr
    header, *rows = table.stdout.splitlines()
    assert header.startswith("DLQ OFFSET") and len(rows) == 1
    assert tenant in rows[0] and "invalid event: event_type" in rows[0]

    limited = _dlq(env, "list", "--limit", "2", "--json")
    assert len(_json_lines(limited)) == 2 and "raise --limit" in limited.stderr

    still_bad = _dlq(env, "replay", "--offset", str(undecodable["dlq_offset"]))
    assert still_bad.returncode == 1, still_bad.stderr
    assert "not sent:" in still_bad.stdout and "value is not a serialized" in still_bad.stdout
    assert "sent 0 to" in still_bad.stdout

    fix_file = tmp_path / "fix.jsonl"
    written = _dlq(
        env, "replay", "--tenant", tenant, "--reason-class", "key", "--to-file", str(fix_file)
    )
    assert written.returncode == 0, written.stderr
    (line,) = [json.loads(text) for text in fix_file.read_text().splitlines()]
    assert line["key_text"] == f"{tenant}#someone-else"
    line["key_text"] = key.decode()
    fix_file.write_text(json.dumps(line) + "\n")

    for _attempt in range(2):
        replayed = _dlq(env, "replay", "--from-file", str(fix_file))
        assert replayed.returncode == 0, replayed.stdout + replayed.stderr
        assert f"sent 1 to {common_settings.raw_topic}" in replayed.stdout
        _wait_consumed_to_end(common_settings, store_stub)

    status = consumer_status(store_stub)
    assert status.rows_written == 2  # ok-1 and the fixed event; the second replay was dropped
    assert status.dead_lettered_count == 4
    assert_each_exactly_once(stored_event_cells(common_settings), {"ok-1", "fix-me"})


def test_a_letter_dead_lettered_long_after_its_ingest_time_is_replayed_with_its_sources_time(
    common_settings: CommonSettings,
    store_stub: Any,
    isolation: Isolation,
    service_env: dict[str, str],
    tmp_path: Path,
) -> None:
    """Its ingest_time is 20 minutes before the dead letter's timestamp (untrusted: more than
    15) but 10 before the source message's, which the replay finds in the raw topic."""
    env = {**os.environ, **service_env, "EVENTPIPE_RUN_DIR": str(tmp_path / "run")}
    now_ms = int(time.time() * 1000)
    late = _event(isolation.tenant_id, "late-1", "u1")
    late.ingest_time.CopyFrom(timestamp_from_micros((now_ms - 20 * 60_000) * 1000))
    late.event_time.CopyFrom(timestamp_from_micros((now_ms - 21 * 60_000) * 1000))
    producer = Producer(producer_config(common_settings))
    producer.produce(
        common_settings.raw_topic,
        key=topic_contract.message_key(isolation.tenant_id, "wrong"),
        value=late.SerializeToString(),
        headers=topic_contract.message_headers(late),
        timestamp=now_ms - 10 * 60_000,
    )
    assert producer.flush(30) == 0
    assert len(dead_letters(common_settings, 1)) == 1

    fix_file = tmp_path / "late.jsonl"
    written = _dlq(env, "replay", "--tenant", isolation.tenant_id, "--to-file", str(fix_file))
    assert written.returncode == 0, written.stderr
    line = json.loads(fix_file.read_text())
    assert line["timestamp_ms"] >= now_ms  # the dead letter's, not the source's
    line["key_text"] = f"{isolation.tenant_id}#u1"
    fix_file.write_text(json.dumps(line) + "\n")

    replayed = _dlq(env, "replay", "--from-file", str(fix_file))
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    assert f"sent 1 to {common_settings.raw_topic}" in replayed.stdout
    _wait_consumed_to_end(common_settings, store_stub)
    assert consumer_status(store_stub).dead_lettered_count == 1
    assert_each_exactly_once(stored_event_cells(common_settings), {"late-1"})
