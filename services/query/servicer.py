"""gRPC servicer of eventpipe.query.v1.QueryService: proto in, domain call, proto out."""

from __future__ import annotations

from typing import Any

from eventpipe.core.storage.granularity import Granularity
from eventpipe.core.validation import check_time_range
from eventpipe.query.v1 import query_pb2, query_pb2_grpc

from query.ports import EventView
from query.queries import EntityRef, EventsQuery, MetricsQuery
from query.reader import EntityReader

_VIEWS = {
    query_pb2.EVENT_VIEW_UNSPECIFIED: EventView.ENRICHED,
    query_pb2.EVENT_VIEW_ENRICHED: EventView.ENRICHED,
    query_pb2.EVENT_VIEW_RAW: EventView.RAW,
}


def _granularity_label(value: int) -> str:
    """ "hour" or "day"; "" for a value this version does not know (parse rejects it)."""
    granularity = Granularity.from_proto(value)
    return "" if granularity is None else granularity.label


class QueryServicer(query_pb2_grpc.QueryServiceServicer):
    """Thin adapter between the wire contract and the query domain logic."""

    def __init__(self, reader: EntityReader) -> None:
        self._reader = reader

    def GetEntity(
        self, request: query_pb2.GetEntityRequest, context: Any
    ) -> query_pb2.GetEntityResponse:
        return self._reader.get_entity(EntityRef.parse(request.tenant_id, request.entity_id))

    def ListEntityEvents(
        self, request: query_pb2.ListEntityEventsRequest, context: Any
    ) -> query_pb2.ListEntityEventsResponse:
        query = EventsQuery.parse(
            tenant_id=request.tenant_id,
            entity_id=request.entity_id,
            time_range=check_time_range(request.time_range),
            event_types=list(request.event_types),
            # An unknown enum number reads as the default view rather than failing.
            view=_VIEWS.get(request.view, EventView.ENRICHED),
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return self._reader.list_entity_events(query)

    def GetEntityMetrics(
        self, request: query_pb2.GetEntityMetricsRequest, context: Any
    ) -> query_pb2.GetEntityMetricsResponse:
        query = MetricsQuery.parse(
            tenant_id=request.tenant_id,
            entity_id=request.entity_id,
            # Unset bounds are not open here: MetricsQuery defaults them to the last 24 hours.
            time_range=check_time_range(request.time_range),
            granularity=_granularity_label(request.granularity),
            event_types=list(request.event_types),
        )
        return self._reader.get_entity_metrics(query)
