"""Server interceptors: domain errors to gRPC statuses (with google.rpc details), metrics, and
the limits on open streams (per server, per tenant, per client connection)."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status
from prometheus_client import Counter, Gauge

from eventpipe.core.errors import EventPipeError, InvalidArgument, ResourceExhausted, Unavailable
from eventpipe.core.metrics import RPC_LATENCY, RPC_REQUESTS

log = logging.getLogger(__name__)


def status_for(error: EventPipeError) -> grpc.Status:
    """Builds the rich gRPC status for a domain error."""
    details: list[any_pb2.Any] = []
    if isinstance(error, InvalidArgument) and error.violations:
        bad_request = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field=v.field, description=v.description
                )
                for v in error.violations
            ]
        )
        packed = any_pb2.Any()
        packed.Pack(bad_request)
        details.append(packed)
    retry_after = getattr(error, "retry_after_seconds", None)
    if isinstance(error, ResourceExhausted | Unavailable) and retry_after:
        retry = error_details_pb2.RetryInfo(
            retry_delay=duration_pb2.Duration(
                seconds=int(retry_after), nanos=int((retry_after % 1) * 1e9)
            )
        )
        packed = any_pb2.Any()
        packed.Pack(retry)
        details.append(packed)
    code_value = error.code.value[0]
    return rpc_status.to_status(
        status_pb2.Status(code=code_value, message=error.message, details=details)
    )


@dataclass(frozen=True)
class _RichStatus(grpc.Status):
    code: grpc.StatusCode
    details: str
    trailing_metadata: tuple[tuple[str, str | bytes], ...]


def _abort(context: grpc.ServicerContext, error: EventPipeError) -> None:
    status = status_for(error)
    metadata = tuple(status.trailing_metadata)
    retry_after = getattr(error, "retry_after_seconds", None)
    if retry_after:
        # The standard header too, for plain HTTP clients behind Envoy.
        metadata += (("retry-after", str(max(1, round(retry_after)))),)
    context.abort_with_status(_RichStatus(status.code, status.details, metadata))


class ErrorMappingInterceptor(grpc.ServerInterceptor):
    """Maps EventPipeError to its status; any other exception becomes INTERNAL without detail."""

    def intercept_service(self, continuation: Callable[..., Any], handler_call_details: Any) -> Any:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        return _wrap_handler(handler, method)


@contextmanager
def _rpc_scope(method: str, context: grpc.ServicerContext) -> Iterator[None]:
    """Maps errors raised inside to statuses and records the RPC's metrics."""
    started = time.perf_counter()
    code = "OK"
    try:
        yield
    except EventPipeError as error:
        code = error.code.name
        _abort(context, error)
    except Exception:
        if _code_already_set(context):
            code = _context_code(context)
            raise
        code = "INTERNAL"
        log.exception("unhandled error", extra={"method": method})
        context.abort(grpc.StatusCode.INTERNAL, "internal error")
    finally:
        RPC_REQUESTS.labels(method, code).inc()
        RPC_LATENCY.labels(method).observe(time.perf_counter() - started)


def rebuild_handler(
    handler: grpc.RpcMethodHandler, wrap: Callable[[Callable[..., Any]], Callable[..., Any]]
) -> grpc.RpcMethodHandler:
    """The same kind of handler, with the same serializers, around ``wrap(behavior)``."""
    serializers = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(wrap(handler.unary_unary), **serializers)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(wrap(handler.unary_stream), **serializers)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(wrap(handler.stream_unary), **serializers)
    return grpc.stream_stream_rpc_method_handler(wrap(handler.stream_stream), **serializers)


def _wrap_handler(handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
    def guard_unary(behavior: Callable[..., Any]) -> Callable[..., Any]:
        def wrapped(request: Any, context: grpc.ServicerContext) -> Any:
            with _rpc_scope(method, context):
                return behavior(request, context)

        return wrapped

    def guard_stream(behavior: Callable[..., Iterator[Any]]) -> Callable[..., Iterator[Any]]:
        def wrapped(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            with _rpc_scope(method, context):
                yield from behavior(request, context)

        return wrapped

    return rebuild_handler(handler, guard_stream if handler.response_streaming else guard_unary)


def _code_already_set(context: grpc.ServicerContext) -> bool:
    # context.abort() raises after setting the code; the generated base servicer sets
    # UNIMPLEMENTED before raising NotImplementedError. Either way the status stands.
    return _context_code(context) != "OK"


def _context_code(context: grpc.ServicerContext) -> str:
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code.name
    if isinstance(code, int):
        return code_pb2.Code.Name(code)
    return "OK"


# ---------------------------------------------------------------- open streams

STREAMS_OPEN = Gauge("eventpipe_streams_open", "Streaming RPCs open now (health Watch excepted).")
STREAMS_REFUSED = Counter(
    "eventpipe_streams_refused_total",
    "Streaming RPCs refused RESOURCE_EXHAUSTED, by the limit they met "
    "(server, tenant, connection).",
    ["limit"],
)
STREAM_RETRY_AFTER_SECONDS = 1.0


class StreamSlot:
    """One open stream's share of the limits; ``close`` gives it back (once)."""

    def __init__(self, limits: StreamLimits, connection: str, tenant: str | None) -> None:
        self.limits = limits
        self.connection = connection
        self.tenant = tenant
        self.closed = False

    def claim_tenant(self, tenant: str) -> None:
        """Counts the stream against ``tenant`` once it is known (auth off: its first message)."""
        self.limits.claim_tenant(self, tenant)

    def close(self) -> None:
        self.limits.release(self)


class StreamLimits:
    """Counts open streams against three ceilings: the server's, each tenant's, each
    connection's. A stream over any of them is refused at once with RESOURCE_EXHAUSTED."""

    def __init__(self, max_streams: int, per_tenant: int, per_connection: int) -> None:
        self.max_streams = max_streams
        self.per_tenant = per_tenant
        self.per_connection = per_connection
        self._lock = threading.Lock()
        self._open = 0
        self._by_tenant: Tally[str] = Tally()
        self._by_connection: Tally[str] = Tally()

    @property
    def open_streams(self) -> int:
        return self._open

    def open(self, connection: str, tenant: str | None) -> StreamSlot:
        """Takes a slot for a new stream, or raises ResourceExhausted naming the limit met."""
        with self._lock:
            if self._open >= self.max_streams:
                refusal = ("server", f"the server holds {self.max_streams} open streams, its limit")
            elif tenant is not None and self._by_tenant[tenant] >= self.per_tenant:
                refusal = ("tenant", self._tenant_message())
            elif self._by_connection[connection] >= self.per_connection:
                refusal = (
                    "connection",
                    f"this connection holds {self.per_connection} open streams, its limit",
                )
            else:
                self._open += 1
                self._by_connection[connection] += 1
                if tenant is not None:
                    self._by_tenant[tenant] += 1
                refusal = None
        if refusal is not None:
            self._refuse(*refusal)
        STREAMS_OPEN.inc()
        return StreamSlot(self, connection, tenant)

    def claim_tenant(self, slot: StreamSlot, tenant: str) -> None:
        with self._lock:
            if slot.closed or slot.tenant is not None:
                return
            full = self._by_tenant[tenant] >= self.per_tenant
            if not full:
                self._by_tenant[tenant] += 1
                slot.tenant = tenant
        if full:
            self._refuse("tenant", self._tenant_message())

    def release(self, slot: StreamSlot) -> None:
        with self._lock:
            if slot.closed:
                return
            slot.closed = True
            self._open -= 1
            _decrement(self._by_connection, slot.connection)
            if slot.tenant is not None:
                _decrement(self._by_tenant, slot.tenant)
        STREAMS_OPEN.dec()

    def _tenant_message(self) -> str:
        return f"this tenant holds {self.per_tenant} open streams, its limit; close one first"

    def _refuse(self, limit: str, message: str) -> None:
        STREAMS_REFUSED.labels(limit).inc()
        raise ResourceExhausted(
            f"too many open streams: {message}", retry_after_seconds=STREAM_RETRY_AFTER_SECONDS
        )


def _decrement(tally: Tally[str], key: str) -> None:
    # Entries at zero go, so the connections of a long-lived server do not pile up.
    tally[key] -= 1
    if tally[key] <= 0:
        del tally[key]


def has_own_thread_pool(handler: grpc.RpcMethodHandler) -> bool:
    """Whether the method runs on a pool of its own (grpc's experimental_thread_pool), as the
    health service's Watch does; such methods are left as they are."""
    behavior = (
        handler.unary_unary or handler.unary_stream or handler.stream_unary or handler.stream_stream
    )
    return getattr(behavior, "experimental_thread_pool", None) is not None


def _claiming_tenant(requests: Iterable[Any], slot: StreamSlot) -> Iterator[Any]:
    for request in requests:
        if slot.tenant is None:
            tenant: str = getattr(request, "tenant_id", "")
            if tenant:
                slot.claim_tenant(tenant)
        yield request


class StreamingInterceptor(grpc.ServerInterceptor):
    """Wraps the streaming methods only (``wrap``), leaving unary ones and those that run on a
    pool of their own as they are."""

    def intercept_service(self, continuation: Callable[..., Any], handler_call_details: Any) -> Any:
        handler = continuation(handler_call_details)
        if handler is None or has_own_thread_pool(handler):
            return handler
        if not (handler.request_streaming or handler.response_streaming):
            return handler
        return rebuild_handler(handler, partial(self.wrap, handler))

    def wrap(
        self, handler: grpc.RpcMethodHandler, behavior: Callable[..., Any]
    ) -> Callable[..., Any]:
        raise NotImplementedError


class StreamLimitInterceptor(StreamingInterceptor):
    """Admits each streaming RPC against ``StreamLimits`` and frees its slot when it ends.

    The tenant is the caller's (``tenant_of_caller``, from the verified token) or, with auth
    off, the tenant_id of the stream's first request that names one. Place it inside
    ``ErrorMappingInterceptor`` so refusals get their RetryInfo and their metrics.
    """

    def __init__(self, limits: StreamLimits, tenant_of_caller: Callable[[], str | None]) -> None:
        self.limits = limits
        self.tenant_of_caller = tenant_of_caller

    def _open(self, request: Any, request_streaming: bool, context: Any) -> StreamSlot:
        tenant = self.tenant_of_caller()
        if tenant is None and not request_streaming:
            tenant = getattr(request, "tenant_id", "") or None
        return self.limits.open(context.peer(), tenant)

    def wrap(
        self, handler: grpc.RpcMethodHandler, behavior: Callable[..., Any]
    ) -> Callable[..., Any]:
        request_streaming = handler.request_streaming

        def requests_of(request: Any, slot: StreamSlot) -> Any:
            if request_streaming and slot.tenant is None:
                return _claiming_tenant(request, slot)
            return request

        def stream_out(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            slot = self._open(request, request_streaming, context)
            try:
                yield from behavior(requests_of(request, slot), context)
            finally:
                slot.close()

        def unary_out(request: Any, context: grpc.ServicerContext) -> Any:
            slot = self._open(request, request_streaming, context)
            try:
                return behavior(requests_of(request, slot), context)
            finally:
                slot.close()

        return stream_out if handler.response_streaming else unary_out
