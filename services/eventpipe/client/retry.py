"""When to try again: RetryInfo first, else exponential backoff with jitter, within a deadline."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from eventpipe.client.errors import RETRYABLE, EventPipeError

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """Retries of UNAVAILABLE and RESOURCE_EXHAUSTED.

    A ``RetryInfo`` delay from the server is honoured: the next try comes after it, plus up to
    ``retry_info_jitter`` of it so that refused clients do not return in lockstep. Without one,
    the delay is drawn uniformly from 0 to ``min(max_backoff, initial_backoff *
    multiplier**attempt)`` ("full jitter"). No try starts after ``deadline`` seconds from the
    first: then the last error is raised.
    """

    initial_backoff: float = 0.1
    max_backoff: float = 10.0
    multiplier: float = 2.0
    deadline: float = 120.0
    retry_info_jitter: float = 0.2
    random: Callable[[float, float], float] = field(default=random.uniform, repr=False)

    def delay(self, attempt: int, retry_after: float | None) -> float:
        """Seconds to wait before try ``attempt + 1`` (``attempt`` counts from 0)."""
        if retry_after is not None and retry_after > 0:
            return retry_after + self.random(0.0, retry_after * self.retry_info_jitter)
        ceiling = min(self.max_backoff, self.initial_backoff * self.multiplier**attempt)
        return self.random(0.0, ceiling)


NO_RETRY = RetryPolicy(deadline=0.0)


def retry_after_of(error: EventPipeError) -> float | None:
    return getattr(error, "retry_after_seconds", None)


def call_with_retry(
    call: Callable[[], T],
    policy: RetryPolicy,
    *,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> T:
    """``call()``, tried again on a retryable ``EventPipeError`` as ``policy`` says."""
    started = clock()
    attempt = 0
    while True:
        try:
            return call()
        except RETRYABLE as error:
            delay = policy.delay(attempt, retry_after_of(error))
            if clock() + delay - started > policy.deadline:
                raise
            sleep(delay)
            attempt += 1
