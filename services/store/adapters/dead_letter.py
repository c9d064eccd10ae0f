"""The dead-letter topic: messages the consumer cannot store, with the reason in headers."""

from __future__ import annotations

from collections.abc import Sequence

from confluent_kafka import KafkaError, Message, Producer
from eventpipe.core.config import CommonSettings
from eventpipe.core.kafka import producer_config

from store.consumer.batch import DeadLetter


class DeadLetterUnavailable(Exception):
    """Kafka did not confirm every dead letter; the batch must not be committed."""


class KafkaDeadLetterSink:
    """Produces dead letters durably (acks=all, idempotent) and waits for every delivery."""

    def __init__(self, common: CommonSettings) -> None:
        self._topic = common.dead_letter_topic
        # linger 0: dead letters are rare and the batch commit waits for them.
        self._producer = Producer(producer_config(common, **{"linger.ms": 0}))

    def send(self, letters: Sequence[DeadLetter], timeout: float) -> None:
        errors: list[str] = []

        def on_delivery(error: KafkaError | None, _message: Message) -> None:
            if error is not None:
                errors.append(str(error))

        for letter in letters:
            self._producer.produce(
                self._topic,
                key=letter.key,
                value=letter.value,
                headers=list(letter.headers),  # type: ignore[arg-type]
                on_delivery=on_delivery,
            )
        remaining = self._producer.flush(timeout)
        if remaining or errors:
            raise DeadLetterUnavailable(
                f"{remaining} dead letters unconfirmed; errors: {'; '.join(errors[:3])}"
            )

    def close(self, timeout: float = 5.0) -> None:
        self._producer.flush(timeout)
