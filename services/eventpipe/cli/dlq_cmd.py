"""`eventpipe dlq list|replay`: the dead-letter topic, read and re-driven from the command line.

    eventpipe dlq list --tenant acme --reason-class invalid-event --limit 20
    eventpipe dlq list --since 2h --json
    eventpipe dlq replay --offset 12 --offset 13           # back to the raw topic, if now valid
    eventpipe dlq replay --tenant acme --reason-class key --to-file fix.jsonl
    eventpipe dlq replay --from-file fix.jsonl             # after editing key_text / event

Both read the dead-letter topic from its beginning (or ``--since``) up to its end when the
command starts, and never commit offsets. ``replay`` judges every message with the topic
contract (``decode_raw_event``) as the store will; a message that still fails is reported and
not sent. Replaying twice stores each event once: the store keeps one row per (tenant_id,
event_id). Kafka and topic names come from EVENTPIPE_* settings or else the running local
stack; docs/store.md ("Dead letters: list and replay") has the details.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from confluent_kafka import (
    OFFSET_END,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from pydantic import ValidationError
from store.config import StoreSettings

from eventpipe.cli.dead_letters import (
    CLASS_NAMES,
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
from eventpipe.cli.enrich_cmd import parse_duration, parse_time
from eventpipe.core.config import CommonSettings, load_settings
from eventpipe.core.kafka import consumer_config, producer_config
from eventpipe.core.validation import EventLimits
from eventpipe.stack.stack import StackConfig

LIST_LIMIT = 100
REPLAY_LIMIT = 1000
# How long the end of the topic may take to arrive before the read gives up.
READ_IDLE_SECONDS = 30.0


class DlqError(Exception):
    """Kafka or the topic is not there; the message says which."""


def kafka_settings(
    args: argparse.Namespace, environ: dict[str, str] | None = None
) -> CommonSettings:
    """CommonSettings with Kafka's address and the topic prefix: the flags, else EVENTPIPE_*
    variables, else the running local stack's (``StackConfig.of_running_stack``)."""
    env = dict(os.environ if environ is None else environ)
    settings = load_settings(CommonSettings)
    stack = StackConfig.of_running_stack(env)
    update: dict[str, Any] = {}
    if args.bootstrap_servers:
        update["kafka_bootstrap_servers"] = args.bootstrap_servers
    elif not env.get("EVENTPIPE_KAFKA_BOOTSTRAP_SERVERS"):
        update["kafka_bootstrap_servers"] = stack.kafka_bootstrap_servers
    if args.topic_prefix is not None:
        update["topic_prefix"] = args.topic_prefix
    elif "EVENTPIPE_TOPIC_PREFIX" not in env and stack.topic_prefix is not None:
        update["topic_prefix"] = stack.topic_prefix
    if not update:
        return settings
    try:
        return CommonSettings(**{**settings.model_dump(), **update})
    except ValidationError as exc:
        raise SystemExit(f"invalid --bootstrap-servers or --topic-prefix: {exc}") from None


def read_letters(
    settings: CommonSettings,
    since_ms: int | None = None,
    first_offset: int | None = None,
    last_offset: int | None = None,
) -> Iterator[Letter]:
    """Every dead letter from the start (the low watermark, ``since_ms`` or ``first_offset``)
    up to the end of the topic when the read starts, in offset order per partition."""
    topic = settings.dead_letter_topic
    # assign(), never subscribe() and never commit: the group id is only a name here.
    consumer = Consumer(consumer_config(settings, f"{settings.topic_prefix}dlq-cli"))
    try:
        try:
            metadata = consumer.list_topics(topic, timeout=10)
        except KafkaException as exc:
            raise DlqError(f"Kafka at {settings.kafka_bootstrap_servers}: {exc}") from None
        described = metadata.topics.get(topic)
        if described is None or described.error is not None or not described.partitions:
            raise DlqError(f"no dead-letter topic {topic!r} at {settings.kafka_bootstrap_servers}")
        ends: dict[int, int] = {}
        starts: list[TopicPartition] = []
        for partition in sorted(described.partitions):
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
            start = low
            if since_ms is not None:
                found = consumer.offsets_for_times([TopicPartition(topic, partition, since_ms)], 10)
                start = high if found[0].offset in (OFFSET_END, -1) else max(low, found[0].offset)
            if first_offset is not None:
                start = max(start, first_offset)
            end = high if last_offset is None else min(high, last_offset + 1)
            if start < end:
                starts.append(TopicPartition(topic, partition, start))
                ends[partition] = end
        if not starts:
            return
        consumer.assign(starts)
        idle_since = time.monotonic()
        while ends:
            messages = consumer.consume(500, timeout=0.5)
            for message in messages:
                if message.error() is not None:
                    continue
                partition, offset = message.partition(), message.offset()
                if partition not in ends or offset is None or offset >= ends[partition]:
                    continue
                yield letter_from_message(message)
                if offset + 1 >= ends[partition]:
                    del ends[partition]
            if messages:
                idle_since = time.monotonic()
                continue
            # Offsets without a message (a gap) end a partition too: ask where the reader is.
            for position in consumer.position([TopicPartition(topic, p) for p in list(ends)]):
                if position.offset >= 0 and position.offset >= ends.get(position.partition, 0):
                    ends.pop(position.partition, None)
            if ends and time.monotonic() - idle_since > READ_IDLE_SECONDS:
                raise DlqError(f"Kafka sent nothing for {READ_IDLE_SECONDS:.0f} s; stopped reading")
    finally:
        consumer.close()


def original_timestamps(settings: CommonSettings, sources: Sequence[str]) -> dict[str, int]:
    """The Kafka timestamps of source messages still in the raw topic, by source
    (``<topic>/<partition>/<offset>``); sources elsewhere or gone are left out."""
    found: dict[str, int] = {}
    consumer = Consumer(consumer_config(settings, f"{settings.topic_prefix}dlq-cli"))
    try:
        for source in dict.fromkeys(sources):
            try:
                topic, partition, offset = parse_position(source)
            except ValueError:
                continue
            if topic != settings.raw_topic:
                continue
            consumer.assign([TopicPartition(topic, partition, offset)])
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                message = consumer.poll(0.5)
                if message is None or message.error() is not None:
                    continue
                if message.partition() != partition or (message.offset() or 0) < offset:
                    continue  # fetched for an earlier assignment
                # Past retention the read starts later (auto.offset.reset): not the source.
                timestamp_ms = message.timestamp()[1]
                if message.offset() == offset and timestamp_ms > 0:
                    found[source] = timestamp_ms
                break
    finally:
        consumer.close()
    return found


def judge_letters(
    settings: CommonSettings, letters: Sequence[Letter], limits: EventLimits
) -> tuple[list[Letter], list[str]]:
    """The letters the store would take now (to send), and why each other one would be
    dead-lettered again. A letter whose ``ingest_time`` is untrusted against its own timestamp
    (dead-lettered long after ingest) is judged again with its source message's timestamp,
    when the raw topic still holds it, and sent with that timestamp."""
    now_micros = int(time.time() * 1_000_000)
    verdicts = [(letter, replay_verdict(letter, limits, now_micros)) for letter in letters]
    untrusted = [
        letter.source
        for letter, reason in verdicts
        if reason is not None and reason_class(reason) == "untrusted-ingest-time"
    ]
    originals = original_timestamps(settings, untrusted) if untrusted else {}
    valid: list[Letter] = []
    problems: list[str] = []
    for letter, reason in verdicts:
        if reason is not None and letter.source in originals:
            retimed = dataclasses.replace(letter, timestamp_ms=originals[letter.source])
            if replay_verdict(retimed, limits, now_micros) is None:
                letter, reason = retimed, None
        if reason is None:
            valid.append(letter)
        else:
            problems.append(f"{letter.position} (source {letter.source}): {reason}")
    return valid, problems


def chosen_letters(
    settings: CommonSettings, args: argparse.Namespace, letter_filter: LetterFilter
) -> tuple[list[Letter], bool]:
    """The letters the filter takes, at most ``--limit``; True when the limit cut the list."""
    offsets = letter_filter.dlq_offsets
    only_offsets = bool(offsets) and not letter_filter.sources
    chosen: list[Letter] = []
    for letter in read_letters(
        settings,
        since_ms=args.since_ms,
        first_offset=min(offsets) if only_offsets else None,
        last_offset=max(offsets) if only_offsets else None,
    ):
        if not letter_filter.matches(letter):
            continue
        if len(chosen) == args.limit:
            return chosen, True
        chosen.append(letter)
    return chosen, False


def send_letters(settings: CommonSettings, letters: Sequence[Letter]) -> tuple[int, list[str]]:
    """Produces the letters to the raw topic (each with its timestamp) and waits for Kafka;
    returns how many Kafka acknowledged and the errors."""
    producer = Producer(producer_config(settings))
    errors: list[str] = []
    acknowledged = 0

    def on_delivery(error: KafkaError | None, _message: Message) -> None:
        nonlocal acknowledged
        if error is None:
            acknowledged += 1
        else:
            errors.append(str(error))

    for letter in letters:
        while True:
            try:
                producer.produce(
                    settings.raw_topic,
                    key=letter.key,
                    value=letter.value,
                    headers=letter.replay_headers(),  # type: ignore[arg-type]
                    timestamp=letter.timestamp_ms or 0,
                    on_delivery=on_delivery,
                )
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    remaining = producer.flush(30)
    if remaining:
        errors.append(f"{remaining} messages not confirmed by Kafka within 30 s")
    return acknowledged, errors


def _filter_of(args: argparse.Namespace) -> LetterFilter:
    return LetterFilter(
        tenant_id=args.tenant,
        reason_contains=args.reason,
        reason_class=args.reason_class,
        dlq_offsets=frozenset(getattr(args, "offset", None) or ()),
        sources=frozenset(getattr(args, "source", None) or ()),
    )


def _list(args: argparse.Namespace) -> int:
    settings = kafka_settings(args)
    try:
        letters, cut = chosen_letters(settings, args, _filter_of(args))
    except (DlqError, KafkaException) as exc:
        print(f"dlq list: {exc}", file=sys.stderr)
        return 1
    if args.json:
        for letter in letters:
            print(json.dumps(letter_summary(letter), ensure_ascii=False))
    else:
        print(format_table(letters, reason_width=10_000 if args.wide else 80))
    more = f"; more match: raise --limit (now {args.limit})" if cut else ""
    print(f"{len(letters)} dead letters in {settings.dead_letter_topic}{more}", file=sys.stderr)
    return 0


def _read_file(path: Path) -> tuple[list[Letter], list[str]]:
    letters: list[Letter] = []
    problems: list[str] = []
    with path.open(encoding="utf-8") as handle:
        for number, text in enumerate(handle, start=1):
            if not text.strip():
                continue
            try:
                letters.append(letter_from_line(json.loads(text)))
            except (ValueError, LineError) as exc:
                problems.append(f"line {number}: {exc}")
    return letters, problems


def _replay(args: argparse.Namespace) -> int:
    settings = kafka_settings(args)
    letter_filter = _filter_of(args)
    problems: list[str] = []
    try:
        if args.from_file:
            letters, problems = _read_file(args.from_file)
            letters = [letter for letter in letters if letter_filter.matches(letter)]
        else:
            if letter_filter == LetterFilter() and args.since_ms is None and not args.all:
                print(
                    "dlq replay: choose messages (--offset, --source, --tenant, --reason, "
                    "--reason-class, --since) or say --all",
                    file=sys.stderr,
                )
                return 2
            letters, cut = chosen_letters(settings, args, letter_filter)
            if cut:
                print(f"only the first {args.limit} matching letters (--limit)", file=sys.stderr)
    except (DlqError, KafkaException, OSError) as exc:
        print(f"dlq replay: {exc}", file=sys.stderr)
        return 1
    if args.to_file:
        try:
            with args.to_file.open("w", encoding="utf-8") as handle:
                for letter in letters:
                    handle.write(json.dumps(letter_to_line(letter), ensure_ascii=False) + "\n")
        except OSError as exc:
            print(f"dlq replay: {exc}", file=sys.stderr)
            return 1
        print(f"wrote {len(letters)} messages to {args.to_file}; fix them, then --from-file")
        return 0
    try:
        valid, still_invalid = judge_letters(
            settings, letters, load_settings(StoreSettings).event_limits()
        )
    except KafkaException as exc:
        print(f"dlq replay: {exc}", file=sys.stderr)
        return 1
    problems += still_invalid
    for problem in problems:
        print(f"not sent: {problem}")
    if args.dry_run:
        print(f"would send {len(valid)} to {settings.raw_topic}; {len(problems)} still invalid")
        return 1 if problems else 0
    refused_rows = sum(1 for letter in valid if letter.reason_class == "bigtable")
    if refused_rows:
        print(
            f"note: {refused_rows} of them were refused by Bigtable; their event ids keep their "
            "claim, so the store drops these replays as duplicates (docs/store.md)"
        )
    sent, errors = send_letters(settings, valid) if valid else (0, [])
    for error in errors[:5]:
        print(f"kafka: {error}")
    print(f"sent {sent} to {settings.raw_topic}; {len(problems)} still invalid (not sent)")
    return 1 if problems or errors else 0


def parse_since(text: str) -> int:
    """``--since``: RFC 3339 time, or a duration back from now (``2h``); epoch milliseconds."""
    if text[:1].isdigit() and text[-1:].isalpha() and not text.endswith("Z"):
        return int((time.time() - parse_duration(text)) * 1000)
    return parse_time(text).ToMilliseconds()


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: a whole number of at least 1")
    return int(text)


def _common_arguments(parser: argparse.ArgumentParser, limit: int) -> None:
    parser.add_argument("--tenant", default=None, help="only this tenant's messages")
    parser.add_argument("--reason", default=None, help="reason contains this text (any case)")
    parser.add_argument("--reason-class", choices=CLASS_NAMES, default=None)
    parser.add_argument(
        "--since",
        dest="since_ms",
        metavar="TIME",
        type=parse_since,
        default=None,
        help="dead-lettered at or after: RFC 3339 or a duration back (30m, 2h, 7d); "
        "default: the beginning of the topic",
    )
    parser.add_argument(
        "--limit",
        type=_positive,
        default=limit,
        help=f"at most this many messages (default {limit})",
    )
    parser.add_argument(
        "--bootstrap-servers",
        default=None,
        help="Kafka (default: $EVENTPIPE_KAFKA_BOOTSTRAP_SERVERS, else the local stack's)",
    )
    parser.add_argument(
        "--topic-prefix",
        default=None,
        help="topic prefix (default: $EVENTPIPE_TOPIC_PREFIX, else the local stack's)",
    )


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    dlq = subparsers.add_parser(
        "dlq",
        help="list and replay dead-lettered messages",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = dlq.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="dead letters with reason, tenant and source")
    _common_arguments(listing, LIST_LIMIT)
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    listing.add_argument("--wide", action="store_true", help="do not cut reasons")
    listing.set_defaults(func=_list)

    replay = actions.add_parser(
        "replay", help="send chosen dead letters back to the raw topic, or to a file to fix"
    )
    _common_arguments(replay, REPLAY_LIMIT)
    replay.add_argument(
        "--offset", type=int, action="append", help="a dead-letter topic offset (repeatable)"
    )
    replay.add_argument(
        "--source",
        action="append",
        help="the source message, <raw topic>/<partition>/<offset> (repeatable)",
    )
    replay.add_argument("--all", action="store_true", help="every dead letter (up to --limit)")
    target = replay.add_mutually_exclusive_group()
    target.add_argument("--to-file", type=Path, help="write the messages out as JSON lines")
    target.add_argument("--from-file", type=Path, help="send the (fixed) messages of a file")
    replay.add_argument("--dry-run", action="store_true", help="validate only, send nothing")
    replay.set_defaults(func=_replay)
