"""A Kafka-native client producing straight into the raw-events topic (no ingest service).

Follows the topic contract (docs/kafka-topic-contract.md, eventpipe.core.topic_contract):
key ``<tenant_id>#<entity_id>``, value the serialized ``eventpipe.common.v1.Event`` with
``tenant_id`` and ``ingest_time`` set, headers for tenant, schema and ingest time. The producer
is durable (acks=all, idempotence) and uses the murmur2 partitioner, as ingest and Java clients
do, so one entity's events share a partition whichever way they come in. Every delivery report
is checked: an event is only "sent" once Kafka confirmed it.

    python examples/direct_producer.py --bootstrap 127.0.0.1:9092 --tenant demo --count 10

The store consumer re-validates every message, so a bad event sent this way is dead-lettered,
never stored.
"""

from __future__ import annotations

import argparse
import time

from confluent_kafka import KafkaError, Message, Producer
from eventpipe.common.v1 import event_pb2
from eventpipe.core import topic_contract
from eventpipe.core.config import CommonSettings
from eventpipe.core.kafka import producer_config
from eventpipe.core.storage.times import timestamp_from_micros


def make_event(tenant_id: str, n: int, now_micros: int) -> event_pb2.Event:
    event = event_pb2.Event(
        tenant_id=tenant_id,
        event_id=f"direct-{now_micros}-{n}",
        event_type="page_view",
        entity_id=f"user-{n % 5}",
    )
    event.event_time.CopyFrom(timestamp_from_micros(now_micros - 1_000_000))
    # A direct producer stamps ingest_time itself: it is the time the event entered the pipeline.
    event.ingest_time.CopyFrom(timestamp_from_micros(now_micros))
    event.attributes["page"].string_value = f"/products/sku-{n:05d}"
    return event


def produce_events(
    bootstrap_servers: str,
    topic: str,
    events: list[event_pb2.Event],
    traceparent: str | None = None,
) -> list[Message]:
    """Produces ``events`` per the contract; returns the confirmed messages or raises."""
    producer = Producer(
        producer_config(
            CommonSettings.model_validate({"kafka_bootstrap_servers": bootstrap_servers}),
            partitioner="murmur2_random",
        )
    )
    confirmed: list[Message] = []
    failed: list[KafkaError] = []

    def on_delivery(err: KafkaError | None, message: Message) -> None:
        if err is not None:
            failed.append(err)
        else:
            confirmed.append(message)

    for event in events:
        producer.produce(
            topic,
            value=event.SerializeToString(deterministic=True),
            key=topic_contract.message_key(event.tenant_id, event.entity_id),
            headers=list[tuple[str, str | bytes | None]](
                topic_contract.message_headers(event, traceparent)
            ),
            on_delivery=on_delivery,
        )
    producer.flush(30)
    if failed or len(confirmed) != len(events):
        raise RuntimeError(f"{len(failed)} events not confirmed: {failed[:3]}")
    return confirmed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--topic", default="eventpipe.events.raw.v1")
    parser.add_argument("--tenant", default="demo")
    parser.add_argument("--count", type=int, default=10)
    args = parser.parse_args()
    now = time.time_ns() // 1000
    events = [make_event(args.tenant, n, now) for n in range(args.count)]
    confirmed = produce_events(args.bootstrap, args.topic, events)
    for message in confirmed:
        print(f"{message.topic()}[{message.partition()}]@{message.offset()} key={message.key()!r}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
