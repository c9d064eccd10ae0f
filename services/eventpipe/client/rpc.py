"""Typed wrappers around the generated stubs' callables: errors become ``EventPipeError``,
idempotent calls are retried, list calls can be followed page after page."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, Generic, Protocol, TypeVar

import grpc

from eventpipe.client.errors import error_from_rpc
from eventpipe.client.retry import RetryPolicy, call_with_retry

Request = TypeVar("Request")
Response = TypeVar("Response")
Item = TypeVar("Item")

# Seconds one try of a call may take, unless the call says otherwise.
DEFAULT_TIMEOUT = 30.0


class Unary(Generic[Request, Response]):
    """One unary RPC: ``method(request, timeout=...) -> response``.

    ``retry`` is set for the RPCs that are safe to repeat (reads; writes keyed by an
    idempotency key), None for the others (a new spec version, a new job).
    """

    def __init__(
        self,
        method: Any,
        retry: RetryPolicy | None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self._method = method
        self._retry = retry
        self._timeout = timeout

    def once(self, request: Request, timeout: float | None = None) -> Response:
        """One try, without retries."""
        try:
            return self._method(request, timeout=timeout or self._timeout)  # type: ignore[no-any-return]
        except grpc.RpcError as error:
            raise error_from_rpc(error) from error

    def __call__(self, request: Request, *, timeout: float | None = None) -> Response:
        if self._retry is None:
            return self.once(request, timeout)
        return call_with_retry(lambda: self.once(request, timeout), self._retry)


class BidiStream(Generic[Request, Response]):
    """One bidirectional streaming RPC: requests in, responses out, errors as EventPipeError."""

    def __init__(self, method: Any) -> None:
        self._method = method

    def __call__(
        self, requests: Iterable[Request], *, timeout: float | None = None
    ) -> Iterator[Response]:
        call = self._method(iter(requests), timeout=timeout)
        try:
            yield from call
        except grpc.RpcError as error:
            raise error_from_rpc(error) from error
        finally:
            call.cancel()  # a no-op once the call ended; stops it when the reader stops early


class PagedRequest(Protocol):
    page_token: str


class PagedResponse(Protocol):
    @property
    def next_page_token(self) -> str: ...


Req = TypeVar("Req", bound=PagedRequest)
Resp = TypeVar("Resp", bound=PagedResponse)


def pages(method: Callable[[Req], Resp], request: Req) -> Iterator[Resp]:
    """Every page of a list call, from ``request``'s own page_token on, until the last page."""
    current: Any = type(request)()
    current.CopyFrom(request)
    while True:
        page = method(current)
        yield page
        if not page.next_page_token:
            return
        current.page_token = page.next_page_token


def items(
    method: Callable[[Req], Resp], request: Req, of_page: Callable[[Resp], Iterable[Item]]
) -> Iterator[Item]:
    """Every item of every page (see ``pages``), fetched a page at a time as they are read."""
    for page in pages(method, request):
        yield from of_page(page)
