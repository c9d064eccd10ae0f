"""The producer through a crash of ingest: the real ingest service is SIGKILLed while batches
are in flight and started again; every event still gets ACCEPTED (retries on UNAVAILABLE) and
the real store holds each one exactly once (the event id makes the retries safe)."""

from __future__ import annotations

import uuid
from concurrent.futures import Future
from datetime import UTC, datetime

import pytest
from eventpipe.client import EventPipeClient, ItemOutcome, ItemStatus, ProducerSettings, RetryPolicy
from eventpipe.common.v1 import event_pb2
from eventpipe.core.waiting import wait_until

from tests.conftest import Isolation, StartService, start_or_fail

pytestmark = [pytest.mark.abuse]

EVENTS = 400


def _event(run: str, n: int) -> event_pb2.Event:
    event = event_pb2.Event(event_id=f"{run}-{n}", event_type="click", entity_id=f"user-{run}")
    event.event_time.FromDatetime(datetime.now(UTC))
    return event


def test_events_sent_across_a_crash_of_ingest_are_all_accepted_and_stored_once(
    start_service: StartService, isolation: Isolation
) -> None:
    ingest = start_service("ingest")
    store = start_service("store", timeout=90)
    run = uuid.uuid4().hex[:8]
    retry = RetryPolicy(initial_backoff=0.2, max_backoff=1.0, deadline=120)
    settings = ProducerSettings(max_batch_events=10, linger_seconds=0, retry=retry)
    futures: list[Future[ItemOutcome]] = []
    with EventPipeClient(
        ingest.address,
        tenant_id=isolation.tenant_id,
        service_targets={"store": store.address},
        retry=retry,
        producer=settings,
    ) as client:
        # The first half goes out while ingest runs; once some of it is answered, ingest is
        # killed (batches may be in flight) and the second half is sent while it is down, so
        # events surely wait for the restart, however fast the machine answered the first half.
        half = EVENTS // 2
        for n in range(half):
            futures.append(client.events.send(_event(run, n)))
        wait_until(lambda: sum(f.done() for f in futures) >= 50, timeout=60, what="50 answers")
        ingest.kill()
        for n in range(half, EVENTS):
            futures.append(client.events.send(_event(run, n)))
        assert not all(f.done() for f in futures), "events sent while ingest is down were answered"
        start_or_fail(ingest)
        assert client.events.flush(timeout=120)
        statuses = [f.result(0).status for f in futures]
        assert statuses == [ItemStatus.ACCEPTED] * EVENTS

        def stored() -> list[str]:
            return [e.event_id for e in client.entities.iter_raw_events(f"user-{run}")]

        wait_until(lambda: len(stored()) >= EVENTS, timeout=90, what="every event stored")
        ids = stored()
    assert sorted(ids) == sorted(f"{run}-{n}" for n in range(EVENTS))
