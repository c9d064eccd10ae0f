"""Dead letters as ``eventpipe dlq`` sees them: the pure part (no Kafka).

A dead letter is the original raw-topic message (key, value, headers) plus the headers the store
consumer added: ``eventpipe-dlq-error`` (the reason) and ``eventpipe-dlq-source``
(``<topic>/<partition>/<offset>``). ``Letter`` holds one with the DLQ headers taken apart;
``LetterFilter`` chooses letters; ``replay_verdict`` judges a letter with the one reading of the
topic contract (``decode_raw_event``) before it goes back to the raw topic; ``letter_to_line``
and ``letter_from_line`` are the ``--to-file``/``--from-file`` JSON-lines form.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import DecodeError

from eventpipe.common.v1 import event_pb2
from eventpipe.core import topic_contract
from eventpipe.core.dead_letter_reasons import (  # the one table, shared with the store's metric
    CLASS_NAMES as CLASS_NAMES,
)
from eventpipe.core.dead_letter_reasons import reason_class
from eventpipe.core.kafka import MessageLike, message_headers
from eventpipe.core.validation import EventLimits

# Added to a replayed message: the dead letter it came from, so a replay that is dead-lettered
# again can be traced. The contract ignores headers it does not know.
HEADER_REPLAY_OF = "eventpipe-dlq-replay-of"
_DLQ_HEADERS = frozenset({topic_contract.HEADER_DLQ_ERROR, topic_contract.HEADER_DLQ_SOURCE})


@dataclass(frozen=True)
class Letter:
    """One dead letter: where it sits in the DLQ, the original message, why and whence."""

    dlq_topic: str
    dlq_partition: int
    dlq_offset: int
    timestamp_ms: int | None
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]  # the original ones: DLQ headers removed
    reason: str
    source: str

    @property
    def position(self) -> str:
        return f"{self.dlq_topic}/{self.dlq_partition}/{self.dlq_offset}"

    @property
    def reason_class(self) -> str:
        return reason_class(self.reason)

    @property
    def event(self) -> event_pb2.Event | None:
        """The value as an Event, None when it does not decode."""
        return decoded_event(self.value)

    @property
    def tenant_id(self) -> str:
        """The event's tenant; else the ``eventpipe-tenant`` header's; else the key's."""
        event = self.event
        if event is not None and event.tenant_id:
            return event.tenant_id
        header = _first_header(self.headers, topic_contract.HEADER_TENANT)
        if header is not None:
            return header.decode("utf-8", "replace")
        if self.key and b"#" in self.key:
            return self.key.split(b"#", 1)[0].decode("utf-8", "replace")
        return ""

    def replay_headers(self) -> list[tuple[str, bytes]]:
        """The headers a replay is produced with: the original ones and where it came from."""
        kept = [(name, value) for name, value in self.headers if name != HEADER_REPLAY_OF]
        return [*kept, (HEADER_REPLAY_OF, self.position.encode())]


def decoded_event(value: bytes | None) -> event_pb2.Event | None:
    if not value:
        return None
    try:
        return event_pb2.Event.FromString(value)
    except (DecodeError, ValueError, RuntimeError):
        return None


def _first_header(headers: Iterable[tuple[str, bytes | None]], name: str) -> bytes | None:
    for key, value in headers:
        if key == name:
            return value or b""
    return None


def _text(value: bytes | None) -> str:
    return (value or b"").decode("utf-8", "replace")


def letter_from_message(message: MessageLike) -> Letter:
    headers = message_headers(message)
    _timestamp_type, timestamp_ms = message.timestamp()
    return Letter(
        dlq_topic=message.topic() or "",
        dlq_partition=message.partition() or 0,
        dlq_offset=message.offset() or 0,
        timestamp_ms=timestamp_ms if timestamp_ms > 0 else None,
        key=message.key(),
        value=message.value(),
        headers=tuple((n, v) for n, v in headers if n not in _DLQ_HEADERS),
        reason=_text(_first_header(headers, topic_contract.HEADER_DLQ_ERROR)),
        source=_text(_first_header(headers, topic_contract.HEADER_DLQ_SOURCE)),
    )


@dataclass(frozen=True)
class LetterFilter:
    """Which letters a command works on; an empty filter takes every letter."""

    tenant_id: str | None = None
    reason_contains: str | None = None  # case-insensitive substring of the reason
    reason_class: str | None = None  # one of CLASS_NAMES
    dlq_offsets: frozenset[int] = field(default_factory=frozenset)
    sources: frozenset[str] = field(default_factory=frozenset)

    def matches(self, letter: Letter) -> bool:
        if self.tenant_id is not None and letter.tenant_id != self.tenant_id:
            return False
        if self.reason_contains and self.reason_contains.lower() not in letter.reason.lower():
            return False
        if self.reason_class is not None and letter.reason_class != self.reason_class:
            return False
        if not (self.dlq_offsets or self.sources):
            return True
        return letter.dlq_offset in self.dlq_offsets or letter.source in self.sources


def replay_verdict(letter: Letter, limits: EventLimits, now_micros: int) -> str | None:
    """None when the letter, produced with its timestamp, would be stored; else the reason
    the store would dead-letter it again (the contract's own words)."""
    try:
        topic_contract.decode_raw_event(
            letter.key,
            letter.value,
            list(letter.headers),
            letter.timestamp_ms,
            limits,
            now_micros,
        )
    except topic_contract.PoisonMessage as exc:
        return str(exc)
    return None


def _iso(timestamp_ms: int | None) -> str:
    if timestamp_ms is None:
        return ""
    moment = datetime.fromtimestamp(timestamp_ms / 1000, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def letter_summary(letter: Letter) -> dict[str, Any]:
    """What ``dlq list --json`` prints for a letter (one JSON object per line)."""
    event = letter.event
    summary: dict[str, Any] = {
        "dlq": letter.position,
        "dlq_offset": letter.dlq_offset,
        "dead_lettered_at": _iso(letter.timestamp_ms),
        "tenant_id": letter.tenant_id,
        "source": letter.source,
        "reason_class": letter.reason_class,
        "reason": letter.reason,
        "key": _text(letter.key),
        "event_id": event.event_id if event is not None else None,
        "entity_id": event.entity_id if event is not None else None,
    }
    replay_of = _first_header(letter.headers, HEADER_REPLAY_OF)
    if replay_of is not None:
        summary["replay_of"] = _text(replay_of)
    return summary


TABLE_COLUMNS = ("DLQ OFFSET", "DEAD-LETTERED AT", "TENANT", "SOURCE", "REASON")


def format_table(letters: Sequence[Letter], reason_width: int = 80) -> str:
    """A plain text table, one letter a row; reasons cut to ``reason_width`` characters."""
    rows = [TABLE_COLUMNS]
    for letter in letters:
        reason = letter.reason
        if len(reason) > reason_width:
            reason = reason[: reason_width - 3] + "..."
        rows.append(
            (
                str(letter.dlq_offset),
                _iso(letter.timestamp_ms),
                letter.tenant_id,
                letter.source,
                reason,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(TABLE_COLUMNS))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


# --- the --to-file / --from-file form -----------------------------------------------------------


class LineError(ValueError):
    """A line of a --from-file file that cannot be read as a message."""


def _b64(value: bytes | None) -> str | None:
    return None if value is None else base64.b64encode(value).decode("ascii")


def _unb64(line: dict[str, Any], name: str) -> bytes | None:
    raw = line.get(name)
    if raw is None:
        return None
    if not isinstance(raw, str):
        raise LineError(f"{name}: expected base64 text or null")
    try:
        return base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise LineError(f"{name}: not valid base64") from None


def _header_to_json(name: str, value: bytes) -> dict[str, str]:
    try:
        return {"name": name, "value": value.decode("utf-8")}
    except UnicodeDecodeError:
        return {"name": name, "base64": base64.b64encode(value).decode("ascii")}


def _header_from_json(item: Any) -> tuple[str, bytes]:
    if not isinstance(item, dict) or not isinstance(item.get("name"), str):
        raise LineError('headers: each header must be {"name": ..., "value"|"base64": ...}')
    if isinstance(item.get("value"), str):
        return item["name"], item["value"].encode("utf-8")
    if isinstance(item.get("base64"), str):
        decoded = _unb64({"base64": item["base64"]}, "base64")
        return item["name"], decoded or b""
    raise LineError(f"headers: {item['name']!r} has neither a text value nor base64")


def letter_to_line(letter: Letter) -> dict[str, Any]:
    """One JSON line of ``--to-file``: the exact bytes (base64) plus editable forms.

    ``key_text`` (the key as UTF-8) and ``event`` (the value as proto3 JSON) are there to be
    edited; ``letter_from_line`` sends an edited form and the exact bytes otherwise.
    """
    line: dict[str, Any] = {
        "dlq": letter.position,
        "source": letter.source,
        "reason": letter.reason,
        "reason_class": letter.reason_class,
        "tenant_id": letter.tenant_id,
        "timestamp_ms": letter.timestamp_ms,
        "key": _b64(letter.key),
        "value": _b64(letter.value),
        "headers": [_header_to_json(name, value) for name, value in letter.headers],
    }
    if letter.key is not None:
        with contextlib.suppress(UnicodeDecodeError):
            line["key_text"] = letter.key.decode("utf-8")
    event = letter.event
    if event is not None:
        line["event"] = json_format.MessageToDict(event)
    return line


def parse_position(text: Any) -> tuple[str, int, int]:
    """``<topic>/<partition>/<offset>`` (a dead letter's place, or its source) -> its parts."""
    if not isinstance(text, str):
        raise ValueError("expected '<topic>/<partition>/<offset>'")
    topic, _, offset = text.rpartition("/")
    topic, _, partition = topic.rpartition("/")
    if not topic or not partition.isdigit() or not offset.isdigit():
        raise ValueError(f"{text!r} is not '<topic>/<partition>/<offset>'")
    return topic, int(partition), int(offset)


def letter_from_line(line: Any) -> Letter:
    """The message a line of a fixed file stands for; raises LineError when it cannot."""
    if not isinstance(line, dict):
        raise LineError("expected a JSON object")
    key = _unb64(line, "key")
    key_text = line.get("key_text")
    if key_text is not None:
        if not isinstance(key_text, str):
            raise LineError("key_text: expected text")
        if key_text.encode("utf-8") != key:
            key = key_text.encode("utf-8")
    value = _unb64(line, "value")
    if line.get("event") is not None:
        try:
            edited = json_format.ParseDict(line["event"], event_pb2.Event())
        except (json_format.ParseError, TypeError, ValueError) as exc:
            raise LineError(f"event: {exc}") from None
        if decoded_event(value) != edited:
            value = edited.SerializeToString(deterministic=True)
    headers = line.get("headers") or []
    if not isinstance(headers, list):
        raise LineError("headers: expected a list")
    timestamp_ms = line.get("timestamp_ms")
    if timestamp_ms is not None and (
        isinstance(timestamp_ms, bool) or not isinstance(timestamp_ms, int) or timestamp_ms <= 0
    ):
        raise LineError("timestamp_ms: expected a positive integer or null")
    try:
        topic, partition, offset = parse_position(line.get("dlq"))
    except ValueError as exc:
        raise LineError(f"dlq: {exc}") from None
    return Letter(
        dlq_topic=topic,
        dlq_partition=partition,
        dlq_offset=offset,
        timestamp_ms=timestamp_ms,
        key=key,
        value=value,
        headers=tuple(
            (name, header_value)
            for name, header_value in (_header_from_json(item) for item in headers)
            if name not in _DLQ_HEADERS
        ),
        reason=str(line.get("reason") or ""),
        source=str(line.get("source") or ""),
    )
