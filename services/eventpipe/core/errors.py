"""One exception hierarchy for domain errors, each carrying its gRPC status code.

Business logic raises these and never imports grpc; ``ErrorMappingInterceptor`` turns them
into gRPC statuses with ``google.rpc`` details (``BadRequest`` field violations,
``RetryInfo``), which Envoy renders as JSON with the matching HTTP status.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import grpc


@dataclass(frozen=True)
class Violation:
    """One refused field: its path and a human-readable reason."""

    field: str
    description: str


@dataclass
class EventPipeError(Exception):
    """Base of every domain error."""

    message: str
    code: grpc.StatusCode = field(default=grpc.StatusCode.INTERNAL, init=False)

    def __str__(self) -> str:
        return self.message


@dataclass
class InvalidArgument(EventPipeError):
    """The request is malformed; ``violations`` names each bad field."""

    violations: list[Violation] = field(default_factory=list)
    code: grpc.StatusCode = field(default=grpc.StatusCode.INVALID_ARGUMENT, init=False)


@dataclass
class NotFound(EventPipeError):
    code: grpc.StatusCode = field(default=grpc.StatusCode.NOT_FOUND, init=False)


@dataclass
class AlreadyExists(EventPipeError):
    code: grpc.StatusCode = field(default=grpc.StatusCode.ALREADY_EXISTS, init=False)


@dataclass
class FailedPrecondition(EventPipeError):
    code: grpc.StatusCode = field(default=grpc.StatusCode.FAILED_PRECONDITION, init=False)


@dataclass
class ResourceExhausted(EventPipeError):
    """Overload or an oversized request; ``retry_after_seconds`` advises when to retry."""

    retry_after_seconds: float | None = None
    code: grpc.StatusCode = field(default=grpc.StatusCode.RESOURCE_EXHAUSTED, init=False)


@dataclass
class Unavailable(EventPipeError):
    """A dependency (Kafka, Bigtable) cannot confirm the work; nothing was acknowledged."""

    retry_after_seconds: float | None = None
    code: grpc.StatusCode = field(default=grpc.StatusCode.UNAVAILABLE, init=False)


@dataclass
class Unauthenticated(EventPipeError):
    code: grpc.StatusCode = field(default=grpc.StatusCode.UNAUTHENTICATED, init=False)


@dataclass
class PermissionDenied(EventPipeError):
    code: grpc.StatusCode = field(default=grpc.StatusCode.PERMISSION_DENIED, init=False)


def describe(violations: Sequence[Violation], limit: int | None = None) -> str:
    """What a person reads about refused fields: ``field: reason; field: reason``.

    ``limit`` keeps the first few, for messages that must stay short; the violations
    themselves still carry every field.
    """
    shown = violations if limit is None else violations[:limit]
    return "; ".join(f"{v.field}: {v.description}" for v in shown)


def invalid_fields(violations: Sequence[Violation], prefix: str = "") -> InvalidArgument:
    """An InvalidArgument naming every violation, its message built by ``describe``."""
    return InvalidArgument(prefix + describe(violations), violations=list(violations))


def invalid(field_path: str, description: str) -> InvalidArgument:
    """Shorthand for a one-field InvalidArgument."""
    return invalid_fields([Violation(field_path, description)])
