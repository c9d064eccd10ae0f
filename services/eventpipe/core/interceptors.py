"""Server interceptors: domain errors to gRPC statuses (with google.rpc details), metrics, and
the limits on open streams (per server, per tenant, per client connection).

A server of several worker processes (docs/serving.md) keeps its server and tenant stream
counts in a file every worker maps (``SharedStreamCounts``), so those limits hold for the whole
server, not for each process; a connection lives in one process, so its count stays local."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import mmap
import struct
import threading
import time
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
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

STREAMS_OPEN = Gauge(
    "eventpipe_streams_open",
    "Streaming RPCs open now (health Watch excepted).",
    multiprocess_mode="livesum",
)
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


class SharedStreamCounts:
    """Open streams of every worker process of one server, in a file they all map.

    Each worker writes only its own region (its open streams, and an open-addressing table of
    tenant digest -> open streams) and reads every region to check the server's limits, under
    an exclusive lock of the file. A worker clears its region when it starts, so a crashed
    worker's streams are not counted after its replacement starts.
    """

    HEADER = struct.Struct("<I4x")
    SLOT = struct.Struct("<QI4x")

    def __init__(self, path: Path, index: int, count: int, max_streams: int) -> None:
        self.index = index
        self.count = count
        # Twice the most tenants one worker can hold streams for: a free slot always exists.
        self.slots = 2 * max_streams + 1
        self.region = self.HEADER.size + self.slots * self.SLOT.size
        self._file = path.open("r+b")
        self._map = mmap.mmap(self._file.fileno(), self.region * count)
        with self.locked():
            start = self.region * index
            self._map[start : start + self.region] = bytes(self.region)

    @classmethod
    def create(cls, path: Path, count: int, max_streams: int) -> None:
        """Writes the empty file (the supervisor, before it starts the workers)."""
        path.write_bytes(bytes((cls.HEADER.size + (2 * max_streams + 1) * cls.SLOT.size) * count))

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Excludes the other processes (the caller excludes its own threads)."""
        fcntl.flock(self._file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._file, fcntl.LOCK_UN)

    def server_open(self) -> int:
        return sum(
            self.HEADER.unpack_from(self._map, self.region * worker)[0]
            for worker in range(self.count)
        )

    def tenant_open(self, tenant: str) -> int:
        digest = _tenant_digest(tenant)
        return sum(self._slot(worker, digest)[1] for worker in range(self.count))

    def add(self, tenant: str | None, delta: int, *, server: bool = True) -> None:
        """Adds ``delta`` to this worker's open streams (``server``) and to ``tenant``'s."""
        base = self.region * self.index
        if server:
            (open_now,) = self.HEADER.unpack_from(self._map, base)
            self.HEADER.pack_into(self._map, base, max(0, open_now + delta))
        if tenant is not None:
            digest = _tenant_digest(tenant)
            slot, count = self._slot(self.index, digest, for_update=True)
            self.SLOT.pack_into(
                self._map, self._slot_offset(self.index, slot), digest, max(0, count + delta)
            )

    def _slot_offset(self, worker: int, slot: int) -> int:
        return self.region * worker + self.HEADER.size + slot * self.SLOT.size

    def _slot(self, worker: int, digest: int, *, for_update: bool = False) -> tuple[int, int]:
        """(slot, open streams) of ``digest`` in ``worker``'s table; with ``for_update`` a slot
        to write it to when absent (the first one at zero along its probe chain)."""
        free: int | None = None
        for step in range(self.slots):
            slot = (digest + step) % self.slots
            found, count = self.SLOT.unpack_from(self._map, self._slot_offset(worker, slot))
            if found == digest:
                return slot, count
            if free is None and count == 0:
                free = slot
            if found == 0:
                break
        if for_update and free is not None:
            return free, 0
        return -1, 0


def _tenant_digest(tenant: str) -> int:
    # Never 0: 0 marks a slot never used, where a probe chain ends.
    return int.from_bytes(hashlib.blake2b(tenant.encode(), digest_size=8).digest(), "little") | 1


class StreamLimits:
    """Counts open streams against three ceilings: the server's, each tenant's, each
    connection's. A stream over any of them is refused at once with RESOURCE_EXHAUSTED.

    With ``shared`` (a worker of several) the server's and the tenants' counts are those of
    every worker together."""

    def __init__(
        self,
        max_streams: int,
        per_tenant: int,
        per_connection: int,
        shared: SharedStreamCounts | None = None,
    ) -> None:
        self.max_streams = max_streams
        self.per_tenant = per_tenant
        self.per_connection = per_connection
        self.shared = shared
        self._lock = threading.Lock()
        self._open = 0
        self._by_tenant: Tally[str] = Tally()
        self._by_connection: Tally[str] = Tally()

    @property
    def open_streams(self) -> int:
        return self._open

    @contextmanager
    def _counting(self) -> Iterator[None]:
        """This process's threads, and with ``shared`` the other workers, wait their turn."""
        with self._lock, self.shared.locked() if self.shared else contextlib.nullcontext():
            yield

    def _server_open(self) -> int:
        return self.shared.server_open() if self.shared else self._open

    def _tenant_open(self, tenant: str) -> int:
        return self.shared.tenant_open(tenant) if self.shared else self._by_tenant[tenant]

    def open(self, connection: str, tenant: str | None) -> StreamSlot:
        """Takes a slot for a new stream, or raises ResourceExhausted naming the limit met."""
        with self._counting():
            if self._server_open() >= self.max_streams:
                refusal = ("server", f"the server holds {self.max_streams} open streams, its limit")
            elif tenant is not None and self._tenant_open(tenant) >= self.per_tenant:
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
                if self.shared:
                    self.shared.add(tenant, 1)
                refusal = None
        if refusal is not None:
            self._refuse(*refusal)
        STREAMS_OPEN.inc()
        return StreamSlot(self, connection, tenant)

    def claim_tenant(self, slot: StreamSlot, tenant: str) -> None:
        with self._counting():
            if slot.closed or slot.tenant is not None:
                return
            full = self._tenant_open(tenant) >= self.per_tenant
            if not full:
                self._by_tenant[tenant] += 1
                if self.shared:
                    self.shared.add(tenant, 1, server=False)
                slot.tenant = tenant
        if full:
            self._refuse("tenant", self._tenant_message())

    def release(self, slot: StreamSlot) -> None:
        with self._counting():
            if slot.closed:
                return
            slot.closed = True
            self._open -= 1
            _decrement(self._by_connection, slot.connection)
            if slot.tenant is not None:
                _decrement(self._by_tenant, slot.tenant)
            if self.shared:
                self.shared.add(slot.tenant, -1)
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
