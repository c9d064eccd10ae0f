"""One typed method per RPC of each service, named after the RPC (``IngestEvents`` ->
``ingest_events``), taking the request message and returning the response message.

Reads, and writes keyed by an idempotency key (events by event_id, dimension records and their
deletions by key and valid_from, an entity's erasure, a cancel), are retried on UNAVAILABLE and
RESOURCE_EXHAUSTED; a call that makes something new each time (a spec version, a job) is tried
once. Each list RPC also has an ``iter_`` twin that follows next_page_token and yields the
items.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc

from eventpipe.client.retry import RetryPolicy
from eventpipe.client.rpc import DEFAULT_TIMEOUT, BidiStream, Unary, items
from eventpipe.common.v1 import event_pb2
from eventpipe.enrich.v1 import enrich_pb2, enrich_pb2_grpc
from eventpipe.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from eventpipe.query.v1 import query_pb2, query_pb2_grpc
from eventpipe.store.v1 import store_pb2, store_pb2_grpc


class IngestApi:
    """eventpipe.ingest.v1.IngestService."""

    def __init__(
        self, channel: grpc.Channel, retry: RetryPolicy, timeout: float = DEFAULT_TIMEOUT
    ) -> None:
        stub = ingest_pb2_grpc.IngestServiceStub(channel)
        self.ingest_event = Unary[ingest_pb2.IngestEventRequest, ingest_pb2.IngestEventResponse](
            stub.IngestEvent, retry, timeout
        )
        self.ingest_events = Unary[ingest_pb2.IngestEventsRequest, ingest_pb2.IngestEventsResponse](
            stub.IngestEvents, retry, timeout
        )
        self.stream_events = BidiStream[
            ingest_pb2.StreamEventsRequest, ingest_pb2.StreamEventsResponse
        ](stub.StreamEvents)


class StoreApi:
    """eventpipe.store.v1.StoreService."""

    def __init__(
        self, channel: grpc.Channel, retry: RetryPolicy, timeout: float = DEFAULT_TIMEOUT
    ) -> None:
        stub = store_pb2_grpc.StoreServiceStub(channel)
        self.upsert_dimension_records = Unary[
            store_pb2.UpsertDimensionRecordsRequest, store_pb2.UpsertDimensionRecordsResponse
        ](stub.UpsertDimensionRecords, retry, timeout)
        self.get_dimension_record = Unary[
            store_pb2.GetDimensionRecordRequest, store_pb2.GetDimensionRecordResponse
        ](stub.GetDimensionRecord, retry, timeout)
        self.delete_dimension_record = Unary[
            store_pb2.DeleteDimensionRecordRequest, store_pb2.DeleteDimensionRecordResponse
        ](stub.DeleteDimensionRecord, retry, timeout)
        self.delete_entity = Unary[store_pb2.DeleteEntityRequest, store_pb2.DeleteEntityResponse](
            stub.DeleteEntity, retry, timeout
        )
        self.list_entity_erasures = Unary[
            store_pb2.ListEntityErasuresRequest, store_pb2.ListEntityErasuresResponse
        ](stub.ListEntityErasures, retry, timeout)
        self.list_raw_events = Unary[
            store_pb2.ListRawEventsRequest, store_pb2.ListRawEventsResponse
        ](stub.ListRawEvents, retry, timeout)
        self.get_consumer_status = Unary[
            store_pb2.GetConsumerStatusRequest, store_pb2.GetConsumerStatusResponse
        ](stub.GetConsumerStatus, retry, timeout)

    def iter_raw_events(self, request: store_pb2.ListRawEventsRequest) -> Iterator[event_pb2.Event]:
        return items(self.list_raw_events, request, lambda page: page.events)

    def iter_entity_erasures(
        self, request: store_pb2.ListEntityErasuresRequest
    ) -> Iterator[store_pb2.EntityErasure]:
        return items(self.list_entity_erasures, request, lambda page: page.erasures)


class EnrichApi:
    """eventpipe.enrich.v1.EnrichService."""

    def __init__(
        self, channel: grpc.Channel, retry: RetryPolicy, timeout: float = DEFAULT_TIMEOUT
    ) -> None:
        stub = enrich_pb2_grpc.EnrichServiceStub(channel)
        self.put_enrichment_spec = Unary[
            enrich_pb2.PutEnrichmentSpecRequest, enrich_pb2.PutEnrichmentSpecResponse
        ](stub.PutEnrichmentSpec, None, timeout)
        self.get_enrichment_spec = Unary[
            enrich_pb2.GetEnrichmentSpecRequest, enrich_pb2.GetEnrichmentSpecResponse
        ](stub.GetEnrichmentSpec, retry, timeout)
        self.create_enrichment_job = Unary[
            enrich_pb2.CreateEnrichmentJobRequest, enrich_pb2.CreateEnrichmentJobResponse
        ](stub.CreateEnrichmentJob, None, timeout)
        self.get_enrichment_job = Unary[
            enrich_pb2.GetEnrichmentJobRequest, enrich_pb2.GetEnrichmentJobResponse
        ](stub.GetEnrichmentJob, retry, timeout)
        self.list_enrichment_jobs = Unary[
            enrich_pb2.ListEnrichmentJobsRequest, enrich_pb2.ListEnrichmentJobsResponse
        ](stub.ListEnrichmentJobs, retry, timeout)
        self.cancel_enrichment_job = Unary[
            enrich_pb2.CancelEnrichmentJobRequest, enrich_pb2.CancelEnrichmentJobResponse
        ](stub.CancelEnrichmentJob, retry, timeout)

    def iter_enrichment_jobs(
        self, request: enrich_pb2.ListEnrichmentJobsRequest
    ) -> Iterator[enrich_pb2.EnrichmentJob]:
        return items(self.list_enrichment_jobs, request, lambda page: page.jobs)


class QueryApi:
    """eventpipe.query.v1.QueryService."""

    def __init__(
        self, channel: grpc.Channel, retry: RetryPolicy, timeout: float = DEFAULT_TIMEOUT
    ) -> None:
        stub = query_pb2_grpc.QueryServiceStub(channel)
        self.get_entity = Unary[query_pb2.GetEntityRequest, query_pb2.GetEntityResponse](
            stub.GetEntity, retry, timeout
        )
        self.list_entity_events = Unary[
            query_pb2.ListEntityEventsRequest, query_pb2.ListEntityEventsResponse
        ](stub.ListEntityEvents, retry, timeout)
        self.get_entity_metrics = Unary[
            query_pb2.GetEntityMetricsRequest, query_pb2.GetEntityMetricsResponse
        ](stub.GetEntityMetrics, retry, timeout)

    def iter_entity_events(
        self, request: query_pb2.ListEntityEventsRequest
    ) -> Iterator[query_pb2.EntityEvent]:
        return items(self.list_entity_events, request, lambda page: page.events)
