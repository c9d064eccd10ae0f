"""gRPC servicer of eventpipe.store.v1.StoreService: proto in, domain call, proto out."""

from __future__ import annotations

from collections.abc import Callable

import grpc
from eventpipe.common.v1 import results_pb2
from eventpipe.core.auth import current_principal
from eventpipe.core.results import ItemStatus
from eventpipe.core.storage.erasures import ErasureRecord
from eventpipe.core.storage.times import timestamp_from_micros
from eventpipe.core.validation import check_time_range, checked_micros
from eventpipe.store.v1 import store_pb2, store_pb2_grpc
from google.rpc import code_pb2

from store.consumer.status import ConsumerState, ConsumerStatus
from store.dimensions import DimensionRecordInput, DimensionStore
from store.erasure import EntityEraser
from store.raw_events import RawEventBrowser

_ITEM_STATUS = {
    ItemStatus.ACCEPTED: results_pb2.ITEM_STATUS_ACCEPTED,
    ItemStatus.DUPLICATE: results_pb2.ITEM_STATUS_DUPLICATE,
    ItemStatus.REJECTED: results_pb2.ITEM_STATUS_REJECTED,
}
_CODES = dict(code_pb2.Code.items())
_CONSUMER_STATE = {
    ConsumerState.RUNNING: store_pb2.CONSUMER_STATE_RUNNING,
    ConsumerState.PAUSED: store_pb2.CONSUMER_STATE_PAUSED,
    ConsumerState.STOPPED: store_pb2.CONSUMER_STATE_STOPPED,
}


class StoreServicer(store_pb2_grpc.StoreServiceServicer):
    """Thin adapter between the wire contract and the store domain logic."""

    def __init__(
        self,
        dimensions: DimensionStore,
        raw_events: RawEventBrowser,
        consumer_status: Callable[[], ConsumerStatus],
        eraser: EntityEraser | None = None,
    ) -> None:
        self._dimensions = dimensions
        self._raw_events = raw_events
        self._consumer_status = consumer_status
        self._eraser = eraser

    def UpsertDimensionRecords(
        self, request: store_pb2.UpsertDimensionRecordsRequest, context: grpc.ServicerContext
    ) -> store_pb2.UpsertDimensionRecordsResponse:
        records = []
        for index, record in enumerate(request.records):
            valid_from, problems = (
                checked_micros(f"records[{index}].valid_from", record.valid_from)
                if record.HasField("valid_from")
                else (None, [])
            )
            records.append(
                DimensionRecordInput(
                    key=record.key,
                    valid_from_micros=valid_from,
                    attributes=record.attributes,
                    valid_from_violations=tuple(problems),
                )
            )
        outcomes = self._dimensions.upsert(request.tenant_id, request.dimension, records)
        response = store_pb2.UpsertDimensionRecordsResponse()
        for outcome in outcomes:
            result = response.results.add(
                index=outcome.index, id=outcome.id, status=_ITEM_STATUS[outcome.status]
            )
            if outcome.status is ItemStatus.REJECTED:
                # A Bigtable code name unknown to google.rpc.Code (none today) reads UNKNOWN.
                result.code = _CODES.get(outcome.code, code_pb2.UNKNOWN)
                result.message = outcome.message
            for violation in outcome.violations:
                result.violations.add(field=violation.field, description=violation.description)
        summary = response.summary
        summary.accepted_count = sum(o.status is ItemStatus.ACCEPTED for o in outcomes)
        summary.duplicate_count = sum(o.status is ItemStatus.DUPLICATE for o in outcomes)
        summary.rejected_count = sum(o.status is ItemStatus.REJECTED for o in outcomes)
        return response

    def GetDimensionRecord(
        self, request: store_pb2.GetDimensionRecordRequest, context: grpc.ServicerContext
    ) -> store_pb2.GetDimensionRecordResponse:
        as_of, problems = (
            checked_micros("as_of_time", request.as_of_time)
            if request.HasField("as_of_time")
            else (None, [])
        )
        version = self._dimensions.get(
            request.tenant_id, request.dimension, request.key, as_of, problems
        )
        record = store_pb2.DimensionRecord(key=version.key)
        record.valid_from.CopyFrom(timestamp_from_micros(version.valid_from_micros))
        for name, value in version.attributes.items():
            record.attributes[name].CopyFrom(value)
        return store_pb2.GetDimensionRecordResponse(record=record)

    def DeleteDimensionRecord(
        self, request: store_pb2.DeleteDimensionRecordRequest, context: grpc.ServicerContext
    ) -> store_pb2.DeleteDimensionRecordResponse:
        valid_from, problems = (
            checked_micros("valid_from", request.valid_from)
            if request.HasField("valid_from")
            else (None, [])
        )
        written = self._dimensions.delete(
            request.tenant_id, request.dimension, request.key, valid_from, problems
        )
        return store_pb2.DeleteDimensionRecordResponse(valid_from=timestamp_from_micros(written))

    def DeleteEntity(
        self, request: store_pb2.DeleteEntityRequest, context: grpc.ServicerContext
    ) -> store_pb2.DeleteEntityResponse:
        assert self._eraser is not None
        principal = current_principal()
        record = self._eraser.erase(
            request.tenant_id, request.entity_id, principal.subject if principal else None
        )
        return store_pb2.DeleteEntityResponse(erasure=_erasure_message(record))

    def ListEntityErasures(
        self, request: store_pb2.ListEntityErasuresRequest, context: grpc.ServicerContext
    ) -> store_pb2.ListEntityErasuresResponse:
        assert self._eraser is not None
        records, next_token = self._eraser.records(
            request.tenant_id, request.page_size, request.page_token
        )
        return store_pb2.ListEntityErasuresResponse(
            erasures=[_erasure_message(r) for r in records], next_page_token=next_token
        )

    def ListRawEvents(
        self, request: store_pb2.ListRawEventsRequest, context: grpc.ServicerContext
    ) -> store_pb2.ListRawEventsResponse:
        events, next_token = self._raw_events.list(
            request.tenant_id,
            request.entity_id,
            check_time_range(request.time_range),
            request.page_size,
            request.page_token,
        )
        return store_pb2.ListRawEventsResponse(events=events, next_page_token=next_token)

    def GetConsumerStatus(
        self, request: store_pb2.GetConsumerStatusRequest, context: grpc.ServicerContext
    ) -> store_pb2.GetConsumerStatusResponse:
        status = self._consumer_status()
        response = store_pb2.GetConsumerStatusResponse(
            state=_CONSUMER_STATE[status.state],
            rows_written=status.rows_written,
            dead_lettered_count=status.dead_lettered,
            last_error=status.last_error,
        )
        for position in status.partitions:
            response.partitions.add(
                topic=position.topic,
                partition=position.partition,
                committed_offset=position.committed_offset,
                high_watermark=position.high_watermark,
                lag=position.lag,
            )
        return response


def _erasure_message(record: ErasureRecord) -> store_pb2.EntityErasure:
    return store_pb2.EntityErasure(
        tenant_id=record.tenant_id,
        entity_id=record.entity_id,
        erase_time=timestamp_from_micros(record.erased_micros),
        subject=record.subject,
        deleted_rows=record.deleted_rows,
    )
