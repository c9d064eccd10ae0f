"""gRPC servicer of eventpipe.ingest.v1.IngestService: proto in, domain call, proto out."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import grpc
from eventpipe.common.v1 import results_pb2
from eventpipe.core import tracing
from eventpipe.core.auth import current_principal
from eventpipe.core.errors import InvalidArgument, PermissionDenied, Violation, invalid_fields
from eventpipe.core.results import ItemOutcome, ItemStatus
from eventpipe.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from google.rpc import code_pb2
from opentelemetry.trace import SpanKind

from ingest.outcome import BatchOutcome
from ingest.pipeline import IngestPipeline
from ingest.streaming import StreamBatch, StreamDrain, ingest_stream

log = logging.getLogger(__name__)

BACKFILL_SCOPE = "admin"
_STATUS = {
    ItemStatus.ACCEPTED: results_pb2.ITEM_STATUS_ACCEPTED,
    ItemStatus.DUPLICATE: results_pb2.ITEM_STATUS_DUPLICATE,
    ItemStatus.REJECTED: results_pb2.ITEM_STATUS_REJECTED,
}


def _fill_item_result(result: results_pb2.ItemResult, item: ItemOutcome) -> None:
    result.index = item.index
    result.id = item.id
    result.status = _STATUS[item.status]
    if item.status is ItemStatus.REJECTED:
        result.code = code_pb2.Code.Value(item.code)
        result.message = item.message
    for violation in item.violations:
        result.violations.add(field=violation.field, description=violation.description)


def item_result(item: ItemOutcome) -> results_pb2.ItemResult:
    result = results_pb2.ItemResult()
    _fill_item_result(result, item)
    return result


_ACCEPTED = results_pb2.ITEM_STATUS_ACCEPTED


def _fill_batch_answer(
    response: ingest_pb2.IngestEventsResponse | ingest_pb2.StreamEventsResponse,
    outcome: BatchOutcome,
) -> None:
    """Writes one result per event, in order, and the summary, into ``response``.

    An accepted event is one ``add`` with three scalars (``repeated.add`` builds in place,
    about twice as fast as constructing each ItemResult and passing the list); only refused
    events go through their ItemOutcome.
    """
    add = response.results.add
    refused = outcome.refused
    if not refused:
        for index, event_id in enumerate(outcome.ids):
            add(index=index, id=event_id, status=_ACCEPTED)
    else:
        for index, event_id in enumerate(outcome.ids):
            item = refused.get(index)
            if item is None:
                add(index=index, id=event_id, status=_ACCEPTED)
            else:
                _fill_item_result(add(), item)
    summary = response.summary
    summary.accepted_count = outcome.accepted
    summary.duplicate_count = outcome.duplicates
    summary.rejected_count = outcome.rejected


def _traceparent(context: grpc.ServicerContext) -> str | None:
    # Envoy forwards the HTTP traceparent header as metadata, so REST clients get it too.
    for key, value in context.invocation_metadata() or ():
        if key == "traceparent":
            return value if isinstance(value, str) else value.decode("ascii", "replace")
    return None


@contextlib.contextmanager
def _request_span(name: str, context: grpc.ServicerContext, tenant_id: str) -> Iterator[str | None]:
    """One span per RPC, child of the caller's ``traceparent``; yields the traceparent the
    Kafka messages carry: the span's own when tracing is on, else the caller's unchanged (with
    tracing off this is the whole cost: no span, nothing per event)."""
    incoming = _traceparent(context)
    if not tracing.enabled():
        yield incoming
        return
    attributes = {"eventpipe.tenant_id": tenant_id} if tenant_id else None
    with tracing.span(
        name, parent=incoming, kind=SpanKind.SERVER, attributes=attributes
    ) as current:
        yield tracing.traceparent_of(current) or incoming


def _backfill_caller() -> str:
    """Who may backfill: a caller with the admin scope. Returns the token's subject for the
    audit log; with auth off (no principal) every caller holds every scope, as for the admin
    services themselves."""
    principal = current_principal()
    if principal is None:
        return ""
    if BACKFILL_SCOPE not in principal.scopes:
        raise PermissionDenied(f"permission denied: backfill needs the {BACKFILL_SCOPE} scope")
    return principal.subject


class IngestServicer(ingest_pb2_grpc.IngestServiceServicer):
    """Thin adapter between the wire contract and ``IngestPipeline``."""

    def __init__(
        self,
        pipeline: IngestPipeline,
        *,
        stream_window: int,
        stream_capacity_wait: float,
        stream_idle_timeout: float | None = None,
        stream_drain: StreamDrain | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.stream_drain = stream_drain or StreamDrain()
        self.stream_window = stream_window
        self.stream_capacity_wait = stream_capacity_wait
        self.stream_idle_timeout = stream_idle_timeout

    def IngestEvent(
        self, request: ingest_pb2.IngestEventRequest, context: grpc.ServicerContext
    ) -> ingest_pb2.IngestEventResponse:
        if not request.HasField("event"):
            raise InvalidArgument(
                "event: is required", violations=[Violation("event", "is required")]
            )
        with _request_span("ingest.IngestEvent", context, request.tenant_id) as traceparent:
            outcome = self.pipeline.ingest(
                request.tenant_id,
                [request.event],
                request_bytes=request.ByteSize(),
                traceparent=traceparent,
            )
        item = outcome.item(0)
        if item.status is ItemStatus.REJECTED:
            # One event: its refusal is the RPC's status, fields named as in the request.
            violations = [
                Violation("event" if v.field == "event" else f"event.{v.field}", v.description)
                for v in item.violations
            ]
            raise invalid_fields(violations)
        return ingest_pb2.IngestEventResponse(result=item_result(item))

    def IngestEvents(
        self, request: ingest_pb2.IngestEventsRequest, context: grpc.ServicerContext
    ) -> ingest_pb2.IngestEventsResponse:
        backfill = request.backfill
        subject = _backfill_caller() if backfill else ""
        with _request_span("ingest.IngestEvents", context, request.tenant_id) as traceparent:
            outcome = self.pipeline.ingest(
                request.tenant_id,
                request.events,
                request_bytes=request.ByteSize(),
                traceparent=traceparent,
                backfill=backfill,
            )
        if backfill:
            # History loads are rare and privileged: each one is on record.
            log.info(
                "backfill",
                extra={
                    "tenant": request.tenant_id,
                    "subject": subject,
                    "accepted": outcome.accepted,
                    "rejected": outcome.rejected,
                },
            )
        response = ingest_pb2.IngestEventsResponse()
        _fill_batch_answer(response, outcome)
        return response

    def StreamEvents(
        self,
        request_iterator: Iterator[ingest_pb2.StreamEventsRequest],
        context: grpc.ServicerContext,
    ) -> Iterator[ingest_pb2.StreamEventsResponse]:
        batches = (
            StreamBatch(request.batch_id, request.tenant_id, request.events, request.ByteSize())
            for request in request_iterator
        )
        # The tenant is known per batch only; the span names the stream, its batches share it.
        with _request_span("ingest.StreamEvents", context, "") as traceparent:
            for batch_id, outcome in ingest_stream(
                self.pipeline,
                batches,
                window=self.stream_window,
                capacity_wait_seconds=self.stream_capacity_wait,
                idle_timeout_seconds=self.stream_idle_timeout,
                draining=self.stream_drain.draining,
                traceparent=traceparent,
            ):
                response = ingest_pb2.StreamEventsResponse(batch_id=batch_id)
                _fill_batch_answer(response, outcome)
                yield response
