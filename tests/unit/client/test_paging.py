"""List calls page automatically: every item once, in order, one call per page; and the
helpers send what they are given."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from eventpipe.client import EventPipeClient
from eventpipe.common.v1 import event_pb2
from eventpipe.enrich.v1 import enrich_pb2, enrich_pb2_grpc
from eventpipe.query.v1 import query_pb2, query_pb2_grpc
from eventpipe.store.v1 import store_pb2, store_pb2_grpc

from tests.unit.client.fakes import serving

TOTAL = 250


def _page(request: Any) -> tuple[range, str]:
    """Items of the page ``request`` asks for (page_size, or 100) and the next token."""
    size = request.page_size or 100
    start = int(request.page_token or 0)
    end = min(start + size, TOTAL)
    return range(start, end), (str(end) if end < TOTAL else "")


class PagedServices(
    query_pb2_grpc.QueryServiceServicer,
    store_pb2_grpc.StoreServiceServicer,
    enrich_pb2_grpc.EnrichServiceServicer,
):
    def __init__(self) -> None:
        self.requests: list[Any] = []

    def ListEntityEvents(self, request: Any, context: Any) -> Any:
        self.requests.append(request)
        numbers, token = _page(request)
        events = [query_pb2.EntityEvent(event=event_pb2.Event(event_id=f"e-{n}")) for n in numbers]
        return query_pb2.ListEntityEventsResponse(events=events, next_page_token=token)

    def ListRawEvents(self, request: Any, context: Any) -> Any:
        self.requests.append(request)
        numbers, token = _page(request)
        events = [event_pb2.Event(event_id=f"e-{n}") for n in numbers]
        return store_pb2.ListRawEventsResponse(events=events, next_page_token=token)

    def ListEntityErasures(self, request: Any, context: Any) -> Any:
        self.requests.append(request)
        numbers, token = _page(request)
        erasures = [store_pb2.EntityErasure(entity_id=f"user-{n}") for n in numbers]
        return store_pb2.ListEntityErasuresResponse(erasures=erasures, next_page_token=token)

    def ListEnrichmentJobs(self, request: Any, context: Any) -> Any:
        self.requests.append(request)
        numbers, token = _page(request)
        jobs = [enrich_pb2.EnrichmentJob(job_id=f"j-{n}") for n in numbers]
        return enrich_pb2.ListEnrichmentJobsResponse(jobs=jobs, next_page_token=token)


def _with_client(test: Any) -> PagedServices:
    fake = PagedServices()
    with (
        serving(query=fake, store=fake, enrich=fake) as address,
        EventPipeClient(address, tenant_id="acme") as client,
    ):
        test(client)
    return fake


def test_iter_events_reads_every_page_once_and_keeps_the_filters_on_each() -> None:
    seen: list[str] = []
    fake = _with_client(
        lambda client: seen.extend(
            e.event.event_id
            for e in client.entities.iter_events(
                "user-1", event_types=["click"], view=query_pb2.EVENT_VIEW_RAW
            )
        )
    )
    assert seen == [f"e-{n}" for n in range(TOTAL)]
    assert [r.page_token for r in fake.requests] == ["", "100", "200"]
    assert {(r.tenant_id, r.entity_id, tuple(r.event_types), r.view) for r in fake.requests} == {
        ("acme", "user-1", ("click",), query_pb2.EVENT_VIEW_RAW)
    }


def test_iter_raw_events_follows_the_store_pages_with_the_page_size_given() -> None:
    seen: list[str] = []
    fake = _with_client(
        lambda client: seen.extend(
            e.event_id for e in client.entities.iter_raw_events("user-1", page_size=120)
        )
    )
    assert seen == [f"e-{n}" for n in range(TOTAL)]
    assert len(fake.requests) == 3


def test_jobs_are_listed_across_pages() -> None:
    seen: list[str] = []
    _with_client(lambda client: seen.extend(j.job_id for j in client.jobs.iter()))
    assert seen == [f"j-{n}" for n in range(TOTAL)]


def test_erasure_records_are_listed_across_pages() -> None:
    seen: list[str] = []
    _with_client(lambda client: seen.extend(e.entity_id for e in client.entities.iter_erasures()))
    assert seen == [f"user-{n}" for n in range(TOTAL)]


def test_a_reader_that_stops_early_fetches_no_further_page() -> None:
    def first_three(client: EventPipeClient) -> None:
        iterator = client.entities.iter_events("user-1")
        assert [next(iterator).event.event_id for _ in range(3)] == ["e-0", "e-1", "e-2"]

    assert len(_with_client(first_three).requests) == 1


def test_a_dimension_record_is_deleted_from_the_time_given() -> None:
    requests: list[Any] = []

    class Deleting(store_pb2_grpc.StoreServiceServicer):
        def DeleteDimensionRecord(self, request: Any, context: Any) -> Any:
            requests.append(request)
            return store_pb2.DeleteDimensionRecordResponse(valid_from=request.valid_from)

    when = datetime(2025, 3, 1, tzinfo=UTC)
    with serving(store=Deleting()) as address, EventPipeClient(address, tenant_id="acme") as client:
        tombstone = client.dimensions.delete("users", "user-1", valid_from=when)
    assert tombstone.ToDatetime(tzinfo=UTC) == when
    assert [(r.tenant_id, r.dimension, r.key) for r in requests] == [("acme", "users", "user-1")]
