"""The three reads: profile, one entity's events (paged), and its aggregates, cached."""

from __future__ import annotations

from typing import Any

from eventpipe.core.errors import NotFound, invalid
from eventpipe.core.page_tokens import INVALID_TOKEN_REASON, PageTokenCodec
from eventpipe.core.storage import keys, tables
from eventpipe.core.storage.rows import skip_bad_row
from eventpipe.query.v1 import query_pb2

from query import decode
from query.cache import AnswerCache
from query.ports import EntityStore, EventView
from query.queries import EntityRef, EventsQuery, MetricsQuery

# Kinds of cached answers (the third element of a cache key, and a metrics label).
PROFILE = "profile"
EVENTS = "events"
METRICS = "metrics"


def estimated_size(answer: Any) -> int:
    """Rough memory of a cached answer: Python protobuf objects take a few times their wire
    size; a negative answer (None) still costs its key and entry."""
    if answer is None:
        return 256
    return int(answer.ByteSize()) * 4 + 512


class EntityReader:
    """Answers the query RPCs from Bigtable through the cache."""

    def __init__(self, store: EntityStore, cache: AnswerCache, tokens: PageTokenCodec) -> None:
        self._store = store
        self._cache = cache
        self._tokens = tokens

    # ---------------------------------------------------------------- GetEntity
    def get_entity(self, ref: EntityRef) -> query_pb2.GetEntityResponse:
        key = (ref.tenant_id, ref.entity_id, PROFILE)
        # A missing profile is cached too (as None): enrichment announces the entity when it
        # first writes it, and bursts of lookups for unknown ids stay off Bigtable.
        answer: query_pb2.GetEntityResponse | None = self._cache.get_or_load(
            key, lambda: self._load_profile(ref)
        )
        if answer is None:
            raise NotFound(f"entity {ref.entity_id!r} not found")
        return answer

    def _load_profile(self, ref: EntityRef) -> query_pb2.GetEntityResponse | None:
        cells = self._store.read_profile(keys.row_key_for_profile(ref.tenant_id, ref.entity_id))
        if cells is None:
            return None
        return query_pb2.GetEntityResponse(
            profile=decode.profile_from_cells(ref.tenant_id, ref.entity_id, cells)
        )

    # ---------------------------------------------------------------- ListEntityEvents
    def list_entity_events(self, query: EventsQuery) -> query_pb2.ListEntityEventsResponse:
        cursor = (
            self._tokens.verify(query.page_token, query.binding()) if query.page_token else None
        )
        if query.view is EventView.RAW:
            # RAW exists to show what was stored a moment ago; entity changes announce only
            # enrichment's writes, so a cached raw page could lag. Always read it.
            return self._load_events(query, cursor)
        key = (
            query.tenant_id,
            query.entity_id,
            EVENTS,
            query.view.value,
            query.start_micros,
            query.end_micros,
            query.event_types,
            query.page_size,
            cursor,
        )
        answer: query_pb2.ListEntityEventsResponse = self._cache.get_or_load(
            key, lambda: self._load_events(query, cursor)
        )
        return answer

    def _load_events(
        self, query: EventsQuery, cursor: bytes | None
    ) -> query_pb2.ListEntityEventsResponse:
        start_key, end_key = keys.event_key_range(
            query.tenant_id, query.entity_id, query.start_micros, query.end_micros
        )
        start_inclusive = True
        if cursor is not None:
            resume = keys.entity_row_key(query.tenant_id, query.entity_id, cursor)
            # A verified token always lies in its own range; checked anyway so that no
            # token, however obtained, can move a scan outside this entity's rows.
            if not start_key <= resume < end_key:
                raise invalid("page_token", INVALID_TOKEN_REASON)
            start_key, start_inclusive = resume, False
        # One row more than the page tells whether another page exists, so the last page
        # never carries a token that leads to an empty page.
        rows = self._store.scan_events(
            query.view,
            start_key,
            end_key,
            start_inclusive=start_inclusive,
            limit=query.page_size + 1,
            event_types=query.event_types,
        )
        page = rows[: query.page_size]
        response = query_pb2.ListEntityEventsResponse()
        enriched = query.view is EventView.ENRICHED
        for row in page:
            try:
                response.events.append(decode.entity_event_from_cells(row.cells, enriched=enriched))
            except ValueError as exc:  # its envelope is unreadable (BadCell)
                table = tables.ENRICHED_EVENTS_TABLE if enriched else tables.RAW_EVENTS_TABLE
                skip_bad_row(table, row.key, exc)
        if len(rows) > query.page_size:
            # Continue strictly after the last row returned: keys are unique and stable, so
            # every row of the range is returned exactly once, whatever is written meanwhile.
            cursor = keys.entity_key_suffix(query.tenant_id, query.entity_id, page[-1].key)
            response.next_page_token = self._tokens.issue(query.binding(), cursor)
        return response

    # ---------------------------------------------------------------- GetEntityMetrics
    def get_entity_metrics(self, query: MetricsQuery) -> query_pb2.GetEntityMetricsResponse:
        key = (
            query.tenant_id,
            query.entity_id,
            METRICS,
            query.granularity,
            query.start_micros,
            query.end_micros,
            query.event_types,
        )
        answer: query_pb2.GetEntityMetricsResponse = self._cache.get_or_load(
            key, lambda: self._load_metrics(query)
        )
        return answer

    def _load_metrics(self, query: MetricsQuery) -> query_pb2.GetEntityMetricsResponse:
        start_key, end_key = keys.metric_key_range(
            query.tenant_id,
            query.entity_id,
            query.granularity_code,
            query.start_micros,
            query.end_micros,
        )
        response = query_pb2.GetEntityMetricsResponse()
        for row in self._store.scan_metrics(start_key, end_key):
            try:
                bucket = decode.metric_bucket_from_cells(row.key, row.cells, query.event_types)
            except ValueError as exc:  # its bucket key is unreadable
                skip_bad_row(tables.ENTITY_METRICS_TABLE, row.key, exc)
                continue
            if bucket is not None:
                response.buckets.append(bucket)
        return response
