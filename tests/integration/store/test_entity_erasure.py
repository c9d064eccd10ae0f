"""DeleteEntity on real Kafka, the real emulator, a store process and a query process sharing
this test's names: after it no read path returns a trace of the entity, neither when late
events arrive nor after a second consumer group re-reads the raw topic from the beginning."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import grpc
from eventpipe.common.v1 import event_pb2
from eventpipe.core.config import CommonSettings
from eventpipe.core.storage import granularity
from eventpipe.core.storage.tables import (
    ENRICHED_EVENTS_TABLE,
    ENTITY_METRICS_TABLE,
    ENTITY_PROFILES_TABLE,
)
from eventpipe.core.storage.times import micros, timestamp_from_micros
from eventpipe.core.waiting import wait_until
from eventpipe.query.v1 import query_pb2, query_pb2_grpc
from eventpipe.stack.components import GrpcService
from eventpipe.stack.probes import free_port
from eventpipe.store.v1 import store_pb2, store_pb2_grpc

from tests.conftest import Isolation
from tests.helpers.http import metric_values
from tests.integration.query.loader import RowLoader
from tests.integration.store.conftest import consumer_status, make_event, produce_events
from tests.unit.query.rows import enriched_event_row, metric_row, profile_row, string

HOUR = 3_600_000_000
ERASED, KEPT = "user-1", "user-10"  # one id a prefix of the other's: its key range must not leak


def raw_ids(stub: Any, tenant: str, entity: str) -> list[str]:
    response = stub.ListRawEvents(
        store_pb2.ListRawEventsRequest(tenant_id=tenant, entity_id=entity, page_size=1000),
        timeout=10,
    )
    return sorted(e.event_id for e in response.events)


def caught_up(stub: Any, messages: int) -> bool:
    """Every partition committed to its end, and the ends hold every message produced."""
    status = consumer_status(stub)
    return (
        len(status.partitions) == 6
        and all(p.lag == 0 for p in status.partitions)
        and sum(p.high_watermark for p in status.partitions) == messages
    )


def seed_views(common: CommonSettings, tenant: str, events: list[event_pb2.Event]) -> None:
    """What enrichment would have written for the events: enriched rows, an hour bucket and
    a profile per entity."""
    now = int(time.time() * 1_000_000)
    hour = now - now % HOUR
    loader = RowLoader(common)
    try:
        loader.write(
            ENRICHED_EVENTS_TABLE,
            [enriched_event_row(e, {"users.tier": string("gold")}) for e in events],
        )
        for entity in (ERASED, KEPT):
            loader.write(
                ENTITY_METRICS_TABLE,
                [
                    metric_row(
                        tenant,
                        entity,
                        granularity.Granularity.HOUR,
                        hour,
                        type_counts={"page_view": 2},
                        values={},
                    )
                ],
            )
            loader.write(
                ENTITY_PROFILES_TABLE,
                [
                    profile_row(
                        tenant,
                        entity,
                        fields={"users.tier": string("gold")},
                        first_seen=now - HOUR,
                        last_seen=now,
                        update_time=now,
                        event_count=2,
                        type_counts={"page_view": 2},
                        totals={},
                    )
                ],
            )
    finally:
        loader.close()


class QueryReads:
    """Every read path of the query service for one entity."""

    def __init__(self, stub: query_pb2_grpc.QueryServiceStub, tenant: str) -> None:
        self.stub = stub
        self.tenant = tenant

    def profile(self, entity: str) -> query_pb2.EntityProfile | None:
        try:
            request = query_pb2.GetEntityRequest(tenant_id=self.tenant, entity_id=entity)
            return self.stub.GetEntity(request, timeout=10).profile
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.NOT_FOUND, error
            return None

    def event_ids(self, entity: str, view: int) -> list[str]:
        request = query_pb2.ListEntityEventsRequest(
            tenant_id=self.tenant, entity_id=entity, view=view, page_size=1000
        )
        return sorted(e.event.event_id for e in self.stub.ListEntityEvents(request).events)

    def buckets(self, entity: str) -> int:
        now = int(time.time() * 1_000_000)
        request = query_pb2.GetEntityMetricsRequest(
            tenant_id=self.tenant, entity_id=entity, granularity=query_pb2.GRANULARITY_HOUR
        )
        request.time_range.start_time.CopyFrom(timestamp_from_micros(now - 3 * HOUR))
        request.time_range.end_time.CopyFrom(timestamp_from_micros(now + HOUR))
        try:
            return len(self.stub.GetEntityMetrics(request, timeout=10).buckets)
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.NOT_FOUND, error
            return 0

    def trace_of(self, entity: str) -> dict[str, Any]:
        """Whatever the query service still returns of the entity (empty when nothing)."""
        found: dict[str, Any] = {}
        if (profile := self.profile(entity)) is not None:
            found["profile"] = profile.entity_id
        for name, view in (
            ("enriched", query_pb2.EVENT_VIEW_ENRICHED),
            ("raw", query_pb2.EVENT_VIEW_RAW),
        ):
            if ids := self.event_ids(entity, view):
                found[name] = ids
        if buckets := self.buckets(entity):
            found["metrics"] = buckets
        return found


def test_after_delete_entity_no_read_path_returns_a_trace_even_after_a_replay_from_the_start(
    start_store: Callable[..., GrpcService],
    start_service: Callable[..., GrpcService],
    common_settings: CommonSettings,
    isolation: Isolation,
) -> None:
    tenant = isolation.tenant_id
    store_service = start_store()
    query_metrics_port = free_port()
    query_service = start_service(
        "query",
        env={
            "EVENTPIPE_QUERY_METRICS_PORT": str(query_metrics_port),
            "EVENTPIPE_QUERY_CACHE_TTL_SECONDS": "600",  # only an invalidation refreshes
        },
    )
    wait_until(
        lambda: metric_values(query_metrics_port).get("eventpipe_query_cache_suspended") == 0.0,
        timeout=60,
        what="the query cache to turn on",
    )
    store_channel = grpc.insecure_channel(store_service.address)
    query_channel = grpc.insecure_channel(query_service.address)
    try:
        store = store_pb2_grpc.StoreServiceStub(store_channel)
        reads = QueryReads(query_pb2_grpc.QueryServiceStub(query_channel), tenant)

        # Events of both entities (user-1: indexes 1, 12, ...; user-10: 10, 21, ...).
        events = [make_event(tenant, i, entity_count=11) for i in range(44)]
        events = [e for e in events if e.entity_id in (ERASED, KEPT)]
        produced = produce_events(common_settings, events)
        wait_until(lambda: caught_up(store, produced), timeout=60, what="events stored")
        erased_ids = sorted(e.event_id for e in events if e.entity_id == ERASED)
        kept_ids = sorted(e.event_id for e in events if e.entity_id == KEPT)
        assert raw_ids(store, tenant, ERASED) == erased_ids
        seed_views(common_settings, tenant, events)
        before = reads.trace_of(ERASED)
        assert set(before) == {"profile", "enriched", "raw", "metrics"}  # and now cached
        kept_before = reads.trace_of(KEPT)

        erasure = store.DeleteEntity(
            store_pb2.DeleteEntityRequest(tenant_id=tenant, entity_id=ERASED), timeout=30
        ).erasure
        assert dict(erasure.deleted_rows) == {
            "events": len(erased_ids),
            "event_ids": len(erased_ids),
            "enriched_events": len(erased_ids),
            "entity_metrics": 1,
            "entity_profiles": 1,
        }
        erased_at = micros(erasure.erase_time)

        assert raw_ids(store, tenant, ERASED) == []
        wait_until(
            lambda: reads.trace_of(ERASED) == {},
            timeout=30,
            what="query to drop the erased entity from its cache and reads",
        )
        assert reads.trace_of(KEPT) == kept_before
        assert raw_ids(store, tenant, KEPT) == kept_ids
        records = store.ListEntityErasures(
            store_pb2.ListEntityErasuresRequest(tenant_id=tenant), timeout=10
        ).erasures
        assert [(r.entity_id, r.subject, micros(r.erase_time)) for r in records] == [
            (ERASED, "anonymous", erased_at)
        ]

        # Late: a re-sent event and an old one arrive after the erasure; new activity too.
        def arriving_now(event_id: str, event_micros: int) -> event_pb2.Event:
            event = make_event(tenant, 1, entity_count=11)
            event.event_id = event_id
            event.event_time.CopyFrom(timestamp_from_micros(event_micros))
            event.ingest_time.CopyFrom(timestamp_from_micros(int(time.time() * 1_000_000)))
            return event

        late = [events[0], arriving_now("late-old", erased_at - HOUR)]
        fresh = arriving_now("after-erasure", erased_at + 1000)
        produced += produce_events(common_settings, [*late, fresh])
        wait_until(lambda: caught_up(store, produced), timeout=60, what="late events consumed")
        assert raw_ids(store, tenant, ERASED) == ["after-erasure"]

        # A second consumer group re-reads the raw topic from the beginning.
        replay = start_store({"EVENTPIPE_STORE_CONSUMER_GROUP": f"{isolation.token}-replay"})
        with grpc.insecure_channel(replay.address) as channel:
            replay_stub = store_pb2_grpc.StoreServiceStub(channel)
            wait_until(lambda: caught_up(replay_stub, produced), timeout=90, what="replay")
        assert raw_ids(store, tenant, ERASED) == ["after-erasure"]
        assert raw_ids(store, tenant, KEPT) == kept_ids
        assert reads.event_ids(ERASED, query_pb2.EVENT_VIEW_RAW) == ["after-erasure"]
        assert "profile" not in reads.trace_of(ERASED)
        replay_metrics = int(replay.env()["EVENTPIPE_STORE_METRICS_PORT"])
        dropped = metric_values(replay_metrics)["eventpipe_store_erased_events_dropped_total"]
        assert dropped == len(erased_ids) + len(late)
    finally:
        store_channel.close()
        query_channel.close()
