"""``EventPipeClient``: one object for the four services, their typed RPCs and the helpers
built on them (the batching producer, paging, job following)."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime
from functools import cached_property

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from eventpipe.client.channel import open_channel
from eventpipe.client.producer import EventProducer, ProducerSettings
from eventpipe.client.retry import RetryPolicy
from eventpipe.client.services import EnrichApi, IngestApi, QueryApi, StoreApi
from eventpipe.client.settings import ClientSettings
from eventpipe.common.v1 import event_pb2, results_pb2
from eventpipe.enrich.v1 import enrich_pb2
from eventpipe.query.v1 import query_pb2
from eventpipe.store.v1 import store_pb2

SERVICES = ("ingest", "store", "enrich", "query")
# The most a batch write takes (ingest.proto, store.proto).
MAX_BATCH_ITEMS = 1000
JOB_DONE = frozenset(
    {enrich_pb2.JOB_STATE_SUCCEEDED, enrich_pb2.JOB_STATE_FAILED, enrich_pb2.JOB_STATE_CANCELLED}
)

TimeLike = datetime | Timestamp


def timestamp(value: TimeLike) -> Timestamp:
    """A Timestamp from a timezone-aware datetime (or a Timestamp, copied)."""
    result = Timestamp()
    if isinstance(value, Timestamp):
        result.CopyFrom(value)
    else:
        if value.tzinfo is None:
            raise ValueError(f"{value!r} has no time zone; use datetime(..., tzinfo=UTC)")
        result.FromDatetime(value)
    return result


def time_range(start: TimeLike | None, end: TimeLike | None) -> event_pb2.TimeRange | None:
    """A TimeRange with the bounds given (None leaves a bound unset), or None for neither."""
    if start is None and end is None:
        return None
    result = event_pb2.TimeRange()
    if start is not None:
        result.start_time.CopyFrom(timestamp(start))
    if end is not None:
        result.end_time.CopyFrom(timestamp(end))
    return result


class EventPipeClient:
    """A client of EventPipe's gRPC API.

    Args:
        target: ``host:port`` of Envoy (all four services on one address) or of one service.
        token: bearer token sent on every call (None when auth is off).
        tls: False (plaintext), True (TLS, system roots) or ``grpc.ChannelCredentials``.
        tenant_id: the tenant used by the helpers when a call does not name one.
        service_targets: per-service addresses (``{"store": "127.0.0.1:50052"}``) that
            override ``target``, for talking to the services' own ports.
        retry: how retryable calls and the producer retry.
        timeout: seconds each try of a unary call may take.
        producer: the limits of the producers (``events`` and ``producer()``'s).

    What is not given comes from ``ClientSettings``: ``EVENTPIPE_CLIENT_*`` variables, else
    the defaults listed in docs/client.md.
    """

    def __init__(
        self,
        target: str,
        *,
        token: str | None = None,
        tls: bool | grpc.ChannelCredentials = False,
        tenant_id: str | None = None,
        service_targets: Mapping[str, str] | None = None,
        retry: RetryPolicy | None = None,
        timeout: float | None = None,
        producer: ProducerSettings | None = None,
    ) -> None:
        unknown = set(service_targets or ()) - set(SERVICES)
        if unknown:
            raise ValueError(f"service_targets: unknown services {sorted(unknown)}")
        self.target = target
        self.tenant_id = tenant_id
        self._token = token
        self._tls = tls
        self._targets = dict(service_targets or {})
        defaults = ClientSettings()
        self.retry = retry or defaults.retry()
        self.producer_settings = producer or dataclasses.replace(
            defaults.producer(), retry=self.retry
        )
        self._timeout = timeout or defaults.timeout_seconds
        self._lock = threading.Lock()
        self._channels: dict[str, grpc.Channel] = {}
        self._producers: list[EventProducer] = []

    # -- plumbing ----------------------------------------------------------------------------

    def _channel(self, service: str) -> grpc.Channel:
        address = self._targets.get(service, self.target)
        with self._lock:
            if address not in self._channels:
                self._channels[address] = open_channel(address, self._token, self._tls)
            return self._channels[address]

    def tenant(self, tenant_id: str | None = None) -> str:
        """The tenant a helper call works for: its own argument, else the client's."""
        chosen = tenant_id or self.tenant_id
        if not chosen:
            raise ValueError("no tenant: pass tenant_id, or EventPipeClient(tenant_id=...)")
        return chosen

    def close(self) -> None:
        """Flushes and stops every producer, then closes the channels."""
        with self._lock:
            producers, self._producers = self._producers, []
        for producer in producers:
            producer.close()
        with self._lock:
            channels, self._channels = list(self._channels.values()), {}
        for channel in channels:
            channel.close()

    def __enter__(self) -> EventPipeClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- the services' RPCs, one typed method each -------------------------------------------

    @cached_property
    def ingest(self) -> IngestApi:
        return IngestApi(self._channel("ingest"), self.retry, self._timeout)

    @cached_property
    def store(self) -> StoreApi:
        return StoreApi(self._channel("store"), self.retry, self._timeout)

    @cached_property
    def enrich(self) -> EnrichApi:
        return EnrichApi(self._channel("enrich"), self.retry, self._timeout)

    @cached_property
    def query(self) -> QueryApi:
        return QueryApi(self._channel("query"), self.retry, self._timeout)

    # -- helpers -----------------------------------------------------------------------------

    @cached_property
    def events(self) -> EventProducer:
        """The producer of the client's tenant (``producer()`` makes others)."""
        return self.producer()

    def producer(
        self,
        tenant_id: str | None = None,
        *,
        backfill: bool = False,
        settings: ProducerSettings | None = None,
    ) -> EventProducer:
        """A new batching producer; ``close()`` of the client flushes and closes it.

        ``backfill`` sends ``IngestEventsRequest.backfill``: event times older than the live
        window are accepted, up to the service's backfill horizon (``admin`` scope).
        """
        made = EventProducer(
            self.ingest,
            self.tenant(tenant_id),
            settings or self.producer_settings,
            backfill=backfill,
        )
        with self._lock:
            self._producers.append(made)
        return made

    @cached_property
    def entities(self) -> Entities:
        return Entities(self)

    @cached_property
    def dimensions(self) -> Dimensions:
        return Dimensions(self)

    @cached_property
    def jobs(self) -> Jobs:
        return Jobs(self)


class Entities:
    """One entity: its profile, its events page after page, its metrics; its erasure."""

    def __init__(self, client: EventPipeClient) -> None:
        self._client = client

    def get(self, entity_id: str, *, tenant_id: str | None = None) -> query_pb2.EntityProfile:
        """The profile; raises ``NotFound`` when enrichment has written none yet."""
        request = query_pb2.GetEntityRequest(
            tenant_id=self._client.tenant(tenant_id), entity_id=entity_id
        )
        return self._client.query.get_entity(request).profile

    def iter_events(
        self,
        entity_id: str,
        *,
        tenant_id: str | None = None,
        view: query_pb2.EventView = query_pb2.EVENT_VIEW_ENRICHED,
        start: TimeLike | None = None,
        end: TimeLike | None = None,
        event_types: Sequence[str] = (),
        page_size: int = 0,
    ) -> Iterator[query_pb2.EntityEvent]:
        """Every event of the entity, newest first, fetched a page at a time."""
        request = query_pb2.ListEntityEventsRequest(
            tenant_id=self._client.tenant(tenant_id),
            entity_id=entity_id,
            time_range=time_range(start, end),
            event_types=event_types,
            view=view,
            page_size=page_size,
        )
        return self._client.query.iter_entity_events(request)

    def iter_raw_events(
        self,
        entity_id: str,
        *,
        tenant_id: str | None = None,
        start: TimeLike | None = None,
        end: TimeLike | None = None,
        page_size: int = 0,
    ) -> Iterator[event_pb2.Event]:
        """Every stored raw event of the entity (the store's ListRawEvents), newest first."""
        request = store_pb2.ListRawEventsRequest(
            tenant_id=self._client.tenant(tenant_id),
            entity_id=entity_id,
            time_range=time_range(start, end),
            page_size=page_size,
        )
        return self._client.store.iter_raw_events(request)

    def metrics(
        self,
        entity_id: str,
        *,
        tenant_id: str | None = None,
        start: TimeLike | None = None,
        end: TimeLike | None = None,
        granularity: query_pb2.Granularity = query_pb2.GRANULARITY_HOUR,
        event_types: Sequence[str] = (),
    ) -> list[query_pb2.MetricBucket]:
        request = query_pb2.GetEntityMetricsRequest(
            tenant_id=self._client.tenant(tenant_id),
            entity_id=entity_id,
            time_range=time_range(start, end),
            granularity=granularity,
            event_types=event_types,
        )
        return list(self._client.query.get_entity_metrics(request).buckets)

    def delete(self, entity_id: str, *, tenant_id: str | None = None) -> store_pb2.EntityErasure:
        """Erases the entity (admin scope): raw and enriched events, metrics, profile; events
        of it dated at or before the erasure are never stored again. Returns the record of the
        erasure. Idempotent, so retried like a read."""
        request = store_pb2.DeleteEntityRequest(
            tenant_id=self._client.tenant(tenant_id), entity_id=entity_id
        )
        return self._client.store.delete_entity(request).erasure

    def iter_erasures(
        self, *, tenant_id: str | None = None, page_size: int = 0
    ) -> Iterator[store_pb2.EntityErasure]:
        """Every erasure record of the tenant (who erased which entity, when, how many rows),
        newest first, fetched a page at a time."""
        request = store_pb2.ListEntityErasuresRequest(
            tenant_id=self._client.tenant(tenant_id), page_size=page_size
        )
        return self._client.store.iter_entity_erasures(request)


class Dimensions:
    """Reference data: upserts of any size, versioned reads, deletion as a version."""

    def __init__(self, client: EventPipeClient) -> None:
        self._client = client

    def upsert(
        self,
        dimension: str,
        records: Sequence[store_pb2.DimensionRecord],
        *,
        tenant_id: str | None = None,
        batch_size: int = 500,
    ) -> store_pb2.UpsertDimensionRecordsResponse:
        """Upserts ``records`` in batches; one answer for all, with one result per record
        (``index`` into ``records``) and the summed summary."""
        if not 1 <= batch_size <= MAX_BATCH_ITEMS:
            raise ValueError(f"batch_size must be 1..{MAX_BATCH_ITEMS}")
        tenant = self._client.tenant(tenant_id)
        merged = store_pb2.UpsertDimensionRecordsResponse()
        for first in range(0, len(records), batch_size):
            response = self._client.store.upsert_dimension_records(
                store_pb2.UpsertDimensionRecordsRequest(
                    tenant_id=tenant,
                    dimension=dimension,
                    records=records[first : first + batch_size],
                )
            )
            for result in response.results:
                added = merged.results.add()
                added.CopyFrom(result)
                added.index += first
            _add_summary(merged.summary, response.summary)
        return merged

    def get(
        self,
        dimension: str,
        key: str,
        *,
        tenant_id: str | None = None,
        as_of: TimeLike | None = None,
    ) -> store_pb2.DimensionRecord:
        """The latest version, or the one valid at ``as_of``; ``NotFound`` when none."""
        request = store_pb2.GetDimensionRecordRequest(
            tenant_id=self._client.tenant(tenant_id), dimension=dimension, key=key
        )
        if as_of is not None:
            request.as_of_time.CopyFrom(timestamp(as_of))
        return self._client.store.get_dimension_record(request).record

    def delete(
        self,
        dimension: str,
        key: str,
        *,
        tenant_id: str | None = None,
        valid_from: TimeLike | None = None,
    ) -> Timestamp:
        """Deletes the record as a version from ``valid_from`` (unset: the server's now) on;
        returns the tombstone's valid_from. Before it, the earlier versions still apply."""
        request = store_pb2.DeleteDimensionRecordRequest(
            tenant_id=self._client.tenant(tenant_id), dimension=dimension, key=key
        )
        if valid_from is not None:
            request.valid_from.CopyFrom(timestamp(valid_from))
        return self._client.store.delete_dimension_record(request).valid_from


def _add_summary(total: results_pb2.BatchSummary, more: results_pb2.BatchSummary) -> None:
    total.accepted_count += more.accepted_count
    total.duplicate_count += more.duplicate_count
    total.rejected_count += more.rejected_count


class Jobs:
    """Enrichment specs and jobs: create, follow, list every page, cancel."""

    def __init__(self, client: EventPipeClient) -> None:
        self._client = client

    def put_spec(
        self, spec: enrich_pb2.EnrichmentSpec, *, tenant_id: str | None = None
    ) -> enrich_pb2.EnrichmentSpec:
        """Stores a new spec version; returns it with its version."""
        request = enrich_pb2.PutEnrichmentSpecRequest(
            tenant_id=self._client.tenant(tenant_id), spec=spec
        )
        return self._client.enrich.put_enrichment_spec(request).spec

    def create(
        self, job: enrich_pb2.EnrichmentJob, *, tenant_id: str | None = None
    ) -> enrich_pb2.EnrichmentJob:
        request = enrich_pb2.CreateEnrichmentJobRequest(
            tenant_id=self._client.tenant(tenant_id), job=job
        )
        return self._client.enrich.create_enrichment_job(request).job

    def get(self, job_id: str, *, tenant_id: str | None = None) -> enrich_pb2.EnrichmentJob:
        request = enrich_pb2.GetEnrichmentJobRequest(
            tenant_id=self._client.tenant(tenant_id), job_id=job_id
        )
        return self._client.enrich.get_enrichment_job(request).job

    def cancel(self, job_id: str, *, tenant_id: str | None = None) -> enrich_pb2.EnrichmentJob:
        request = enrich_pb2.CancelEnrichmentJobRequest(
            tenant_id=self._client.tenant(tenant_id), job_id=job_id
        )
        return self._client.enrich.cancel_enrichment_job(request).job

    def iter(
        self, *, tenant_id: str | None = None, page_size: int = 0
    ) -> Iterator[enrich_pb2.EnrichmentJob]:
        """Every job of the tenant, newest first, fetched a page at a time."""
        request = enrich_pb2.ListEnrichmentJobsRequest(
            tenant_id=self._client.tenant(tenant_id), page_size=page_size
        )
        return self._client.enrich.iter_enrichment_jobs(request)

    def wait(
        self,
        job: enrich_pb2.EnrichmentJob,
        *,
        tenant_id: str | None = None,
        timeout: float | None = None,
        interval: float = 1.0,
        on_update: Callable[[enrich_pb2.EnrichmentJob], None] | None = None,
    ) -> enrich_pb2.EnrichmentJob:
        """Polls the job every ``interval`` seconds until it ends or ``timeout`` passes, and
        returns its last state (check ``state``: still running when the timeout came first)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while job.state not in JOB_DONE:
            if deadline is not None and time.monotonic() + interval > deadline:
                break
            time.sleep(interval)
            job = self.get(job.job_id, tenant_id=tenant_id)
            if on_update is not None:
                on_update(job)
        return job
