"""The pure part of `eventpipe dlq`: reading a dead letter, choosing, judging and the file form."""

from __future__ import annotations

import argparse
import base64
import json
from pathlib import Path
from typing import Any

import pytest
from eventpipe.cli import dlq_cmd
from eventpipe.cli.dead_letters import (
    CLASS_NAMES,
    HEADER_REPLAY_OF,
    Letter,
    LetterFilter,
    LineError,
    format_table,
    letter_from_line,
    letter_from_message,
    letter_summary,
    letter_to_line,
    parse_position,
    reason_class,
    replay_verdict,
)
from eventpipe.common.v1 import event_pb2
from eventpipe.core import topic_contract
from eventpipe.core.storage.times import timestamp_from_micros
from eventpipe.core.validation import EventLimits

from tests.unit.store.fakes import FakeMessage

NOW = 1_700_000_000_123_456
LIMITS = EventLimits()
DLQ = "p.events.dlq.v1"
SOURCE = "p.events.raw.v1/3/41"


def event(tenant: str = "acme", entity: str = "u1", event_id: str = "e1") -> event_pb2.Event:
    result = event_pb2.Event(
        tenant_id=tenant, event_id=event_id, event_type="click", entity_id=entity
    )
    result.event_time.CopyFrom(timestamp_from_micros(NOW - 1_000_000))
    result.ingest_time.CopyFrom(timestamp_from_micros(NOW))
    result.attributes["url"].string_value = "/a"
    return result


def message(
    key: bytes | None,
    value: bytes | None,
    headers: list[tuple[str, Any]],
    offset: int = 7,
    timestamp_ms: int = NOW // 1000,
) -> FakeMessage:
    """A dead letter as confluent_kafka.Message presents it."""
    return FakeMessage(DLQ, 0, offset, key, value, headers, timestamp_ms)


def dead_letter(
    ev: event_pb2.Event | None = None,
    reason: str = "message key must be '<tenant_id>#<entity_id>' of the event",
    key: bytes | None = None,
    value: bytes | None = None,
    offset: int = 7,
) -> Letter:
    ev = ev if ev is not None else event()
    headers: list[tuple[str, bytes | str | None]] = [*topic_contract.message_headers(ev)]
    headers += [
        (topic_contract.HEADER_DLQ_ERROR, reason.encode()),
        (topic_contract.HEADER_DLQ_SOURCE, SOURCE.encode()),
    ]
    return letter_from_message(
        message(
            key if key is not None else topic_contract.message_key(ev.tenant_id, ev.entity_id),
            value if value is not None else ev.SerializeToString(),
            headers,
            offset,
        )
    )


@pytest.mark.parametrize(
    ("reason", "expected"),
    [
        ("empty message value: expected a serialized eventpipe.common.v1.Event", "empty-value"),
        ("value is not a serialized eventpipe.common.v1.Event: Error parsing", "undecodable"),
        ("unsupported eventpipe-schema b'x'; expected ...", "schema-header"),
        ("eventpipe-tenant header does not match tenant_id", "tenant-header"),
        ("eventpipe-ingest-time header is not an integer", "ingest-time-header"),
        ("eventpipe-ingest-time header does not match ingest_time", "ingest-time-header"),
        ("invalid event: ingest_time: must lie in ...", "invalid-event"),
        ("untrusted ingest_time: more than 60 s in the future", "untrusted-ingest-time"),
        ("invalid event: event_type: is required", "invalid-event"),
        ("message key must be '<tenant_id>#<entity_id>' of the event", "key"),
        ("cannot decode the message: KeyError: 'x'", "decode-error"),
        ("cannot turn the message into a row: ValueError: y", "row-error"),
        ("bigtable refused the row: INVALID_ARGUMENT: too big", "bigtable"),
        ("something new", "other"),
    ],
)
def test_every_documented_reason_has_its_class(reason: str, expected: str) -> None:
    assert reason_class(reason) == expected
    assert expected in CLASS_NAMES


def test_a_dead_letter_keeps_the_original_headers_and_takes_reason_and_source_apart() -> None:
    letter = dead_letter()
    names = [name for name, _ in letter.headers]
    assert topic_contract.HEADER_DLQ_ERROR not in names
    assert topic_contract.HEADER_DLQ_SOURCE not in names
    assert topic_contract.HEADER_TENANT in names
    assert letter.source == SOURCE
    assert letter.reason_class == "key"
    assert letter.position == f"{DLQ}/0/7"
    assert letter.timestamp_ms == NOW // 1000


def test_the_tenant_comes_from_the_event_else_the_header_else_the_key() -> None:
    assert dead_letter(event(tenant="acme")).tenant_id == "acme"
    garbage = b"\xff\xff\xff"
    with_header = dead_letter(event(tenant="beta"), value=garbage)
    assert with_header.tenant_id == "beta"
    bare = letter_from_message(message(b"gamma#u1", garbage, []))
    assert bare.tenant_id == "gamma"
    assert letter_from_message(message(None, None, [])).tenant_id == ""


def test_text_headers_read_as_bytes() -> None:
    letter = letter_from_message(
        message(b"k", b"", [(topic_contract.HEADER_DLQ_ERROR, "why"), ("x", None)])
    )
    assert letter.reason == "why"
    assert letter.headers == (("x", b""),)


def test_the_filter_takes_tenant_reason_text_class_and_chosen_offsets() -> None:
    key_letter = dead_letter(event(tenant="acme"), offset=3)
    invalid = dead_letter(event(tenant="beta"), reason="invalid event: event_type: is required")
    assert LetterFilter().matches(key_letter)
    assert LetterFilter(tenant_id="acme").matches(key_letter)
    assert not LetterFilter(tenant_id="beta").matches(key_letter)
    assert LetterFilter(reason_contains="EVENT_TYPE").matches(invalid)
    assert not LetterFilter(reason_contains="event_type").matches(key_letter)
    assert LetterFilter(reason_class="key").matches(key_letter)
    assert not LetterFilter(reason_class="key").matches(invalid)
    assert LetterFilter(dlq_offsets=frozenset({3})).matches(key_letter)
    assert not LetterFilter(dlq_offsets=frozenset({4})).matches(key_letter)
    assert LetterFilter(sources=frozenset({SOURCE})).matches(key_letter)
    assert LetterFilter(dlq_offsets=frozenset({4}), sources=frozenset({SOURCE})).matches(invalid)


def test_a_letter_that_still_breaks_the_contract_gets_the_contracts_reason() -> None:
    bad_key = dead_letter(key=b"acme#someone-else")
    assert replay_verdict(bad_key, LIMITS, NOW) == (
        "message key must be '<tenant_id>#<entity_id>' of the event"
    )
    fine = dead_letter(reason="cannot turn the message into a row: ValueError: a fixed bug")
    assert replay_verdict(fine, LIMITS, NOW) is None


def test_a_replay_is_judged_against_the_dead_letters_timestamp() -> None:
    late = letter_from_message(
        message(
            topic_contract.message_key("acme", "u1"),
            event().SerializeToString(),
            list(topic_contract.message_headers(event())),
            timestamp_ms=NOW // 1000 + 20 * 60 * 1000,
        )
    )
    verdict = replay_verdict(late, LIMITS, NOW + 20 * 60 * 1_000_000)
    assert verdict is not None and verdict.startswith("untrusted ingest_time")


def test_a_replay_says_where_it_came_from_and_drops_an_older_replay_mark() -> None:
    letter = dead_letter()
    headers = letter.replay_headers()
    assert headers[-1] == (HEADER_REPLAY_OF, f"{DLQ}/0/7".encode())
    replayed_again = Letter(
        DLQ, 0, 9, None, None, None, tuple(headers), "r", SOURCE
    ).replay_headers()
    assert [name for name, _ in replayed_again].count(HEADER_REPLAY_OF) == 1
    assert replayed_again[-1] == (HEADER_REPLAY_OF, f"{DLQ}/0/9".encode())


def test_an_unedited_line_gives_back_the_exact_bytes() -> None:
    letter = dead_letter()
    line = json.loads(json.dumps(letter_to_line(letter)))
    assert base64.b64decode(line["value"]) == letter.value
    assert line["key_text"] == "acme#u1"
    assert line["event"]["eventId"] == "e1"
    assert line["reason_class"] == "key"
    back = letter_from_line(line)
    assert back == letter


def test_an_edited_key_text_and_event_replace_the_bytes() -> None:
    letter = dead_letter(key=b"acme#wrong")
    line = letter_to_line(letter)
    line["key_text"] = "acme#u2"
    line["event"]["entityId"] = "u2"
    fixed = letter_from_line(line)
    assert fixed.key == b"acme#u2"
    assert event_pb2.Event.FromString(fixed.value or b"").entity_id == "u2"
    assert replay_verdict(fixed, LIMITS, NOW) is None


def test_binary_values_and_headers_survive_the_file() -> None:
    letter = letter_from_message(
        message(b"\xfe\xff", b"\x00\x01", [("bin", b"\xff\x00"), ("txt", b"hello")])
    )
    line = json.loads(json.dumps(letter_to_line(letter)))
    assert "key_text" not in line and "event" not in line
    assert line["headers"] == [
        {"name": "bin", "base64": base64.b64encode(b"\xff\x00").decode()},
        {"name": "txt", "value": "hello"},
    ]
    assert letter_from_line(line) == letter


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"value": "not base64!"}, "value: not valid base64"),
        ({"dlq": "nowhere"}, "dlq:"),
        ({"headers": [{"name": "x"}]}, "headers:"),
        ({"timestamp_ms": -5}, "timestamp_ms:"),
        ({"event": {"noSuchField": 1}}, "event:"),
    ],
)
def test_a_broken_line_is_refused_with_the_field_named(
    change: dict[str, object], message: str
) -> None:
    line = {**letter_to_line(dead_letter()), **change}
    with pytest.raises(LineError, match=message):
        letter_from_line(line)


def test_dlq_headers_in_a_file_are_never_sent_back() -> None:
    line = letter_to_line(dead_letter())
    line["headers"].append({"name": topic_contract.HEADER_DLQ_ERROR, "value": "old"})
    names = [name for name, _ in letter_from_line(line).headers]
    assert topic_contract.HEADER_DLQ_ERROR not in names


def test_the_table_shows_offset_tenant_source_and_a_cut_reason() -> None:
    letter = dead_letter(reason="invalid event: " + "x" * 200)
    table = format_table([letter], reason_width=40).splitlines()
    assert table[0].split() == [
        "DLQ",
        "OFFSET",
        "DEAD-LETTERED",
        "AT",
        "TENANT",
        "SOURCE",
        "REASON",
    ]
    assert "acme" in table[1] and SOURCE in table[1] and table[1].endswith("...")
    assert "2023-11-14T22:13:20.123Z" in table[1]


def test_the_json_summary_names_the_event() -> None:
    summary = letter_summary(dead_letter())
    assert summary["tenant_id"] == "acme"
    assert summary["event_id"] == "e1"
    assert summary["source"] == SOURCE
    assert summary["dlq_offset"] == 7
    assert "replay_of" not in summary


def _args(**values: object) -> argparse.Namespace:
    return argparse.Namespace(**{"bootstrap_servers": None, "topic_prefix": None, **values})


def test_kafka_and_prefix_come_from_flags_then_variables_then_the_running_stack(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "stack.json").write_text(json.dumps({"kafka_port": 19092, "topic_prefix": "s."}))
    monkeypatch.delenv("EVENTPIPE_KAFKA_BOOTSTRAP_SERVERS", raising=False)
    monkeypatch.delenv("EVENTPIPE_TOPIC_PREFIX", raising=False)
    environ = {"EVENTPIPE_RUN_DIR": str(tmp_path)}
    from_stack = dlq_cmd.kafka_settings(_args(), environ)
    assert from_stack.kafka_bootstrap_servers == "127.0.0.1:19092"
    assert from_stack.dead_letter_topic == "s.events.dlq.v1"

    monkeypatch.setenv("EVENTPIPE_KAFKA_BOOTSTRAP_SERVERS", "kafka:9092")
    monkeypatch.setenv("EVENTPIPE_TOPIC_PREFIX", "v.")
    environ.update(EVENTPIPE_KAFKA_BOOTSTRAP_SERVERS="kafka:9092", EVENTPIPE_TOPIC_PREFIX="v.")
    from_env = dlq_cmd.kafka_settings(_args(), environ)
    assert (from_env.kafka_bootstrap_servers, from_env.topic_prefix) == ("kafka:9092", "v.")

    flags = dlq_cmd.kafka_settings(_args(bootstrap_servers="k:1", topic_prefix="f."), environ)
    assert (flags.kafka_bootstrap_servers, flags.raw_topic) == ("k:1", "f.events.raw.v1")
    with pytest.raises(SystemExit):
        dlq_cmd.kafka_settings(_args(topic_prefix="bad prefix!"), environ)


def test_since_takes_a_time_or_a_duration_back() -> None:
    assert dlq_cmd.parse_since("2023-11-14T22:13:20Z") == 1_700_000_000_000
    assert abs(dlq_cmd.parse_since("2h") - (dlq_cmd.time.time() - 7200) * 1000) < 5_000


def test_replay_without_a_choice_refuses_to_take_every_letter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from eventpipe.cli.main import main

    monkeypatch.setenv("EVENTPIPE_RUN_DIR", str(tmp_path))
    assert main(["dlq", "replay"]) == 2
    assert "--all" in capsys.readouterr().err


def test_a_position_is_topic_partition_and_offset_even_with_slashes_in_the_topic() -> None:
    assert parse_position("a.events.raw.v1/3/41") == ("a.events.raw.v1", 3, 41)
    assert parse_position("odd/topic/0/7") == ("odd/topic", 0, 7)
    for bad in ("raw/3", "raw/x/1", "/1/2", None):
        with pytest.raises(ValueError):
            parse_position(bad)
