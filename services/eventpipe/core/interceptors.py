"""Server interceptors: domain errors to gRPC statuses (with google.rpc details), and metrics."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

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

    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(
            guard_unary(handler.unary_unary),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(
            guard_unary(handler.stream_unary),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(
            guard_stream(handler.unary_stream),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    return grpc.stream_stream_rpc_method_handler(
        guard_stream(handler.stream_stream),
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


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
