"""A query replica restarted under read load through Envoy: no reader sees an error other than
UNAVAILABLE, which it retries, and every read is answered in the end."""

from __future__ import annotations

import threading
import time

import grpc
import pytest
from eventpipe.common.v1 import event_pb2
from eventpipe.core.config import CommonSettings
from eventpipe.core.waiting import wait_until
from eventpipe.query.v1 import query_pb2, query_pb2_grpc
from eventpipe.stack.stack import Stack

from tests.cluster.conftest import CLUSTER_TEST_TIMEOUT, restored, wait_stored
from tests.integration.store.conftest import make_event, produce_events

pytestmark = [pytest.mark.cluster, pytest.mark.abuse, pytest.mark.timeout(CLUSTER_TEST_TIMEOUT)]

READERS = 4
EVENTS = 20


class Readers:
    """Threads reading one entity's events through Envoy until told to stop; each read is
    retried on UNAVAILABLE (as gRPC clients are told to) until it is answered."""

    def __init__(self, address: str, tenant: str) -> None:
        self.address = address
        self.request = query_pb2.ListEntityEventsRequest(
            tenant_id=tenant,
            entity_id="user-0",
            view=query_pb2.EVENT_VIEW_RAW,
            page_size=100,
        )
        self.answered = 0
        self.retries = 0
        self.wrong_answers: list[int] = []
        self.errors: list[str] = []
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._read) for _ in range(READERS)]

    def _read(self) -> None:
        with grpc.insecure_channel(self.address) as channel:
            stub = query_pb2_grpc.QueryServiceStub(channel)
            while not self.stop.is_set():
                self._read_once(stub)

    def _read_once(self, stub: query_pb2_grpc.QueryServiceStub) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                response = stub.ListEntityEvents(self.request, timeout=10)
            except grpc.RpcError as error:
                if error.code() != grpc.StatusCode.UNAVAILABLE:
                    with self.lock:
                        self.errors.append(f"{error.code()}: {error.details()}")
                    return
                with self.lock:
                    self.retries += 1
                time.sleep(0.05)  # a retrying client's backoff
                continue
            with self.lock:
                self.answered += 1
                if len(response.events) != EVENTS:
                    self.wrong_answers.append(len(response.events))
            return
        with self.lock:
            self.errors.append("a read retried for 60 s without an answer")

    def count(self) -> int:
        with self.lock:
            return self.answered

    def __enter__(self) -> Readers:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join()


def test_restarting_a_query_replica_under_read_load_shows_clients_only_retried_unavailable(
    cluster_stack: Stack, cluster_settings: CommonSettings, tenant: str
) -> None:
    events: list[event_pb2.Event] = [make_event(tenant, i, entity_count=1) for i in range(EVENTS)]
    produce_events(cluster_settings, events)
    wait_stored(cluster_settings, tenant, {e.event_id for e in events})
    victim = cluster_stack.replicas["query"][1]

    with restored(victim), Readers(cluster_stack.envoy.address, tenant) as readers:
        wait_until(lambda: readers.count() >= 100, timeout=120, what="reads before the restart")
        victim.stop()
        during = readers.count()
        victim.start()
        wait_until(
            lambda: readers.count() >= during + 100, timeout=120, what="reads after the restart"
        )

    assert not readers.errors
    assert not readers.wrong_answers
    assert victim.safe_is_healthy()
