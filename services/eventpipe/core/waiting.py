"""Waiting for a condition with a deadline instead of sleeping a fixed time."""

from __future__ import annotations

import time
from collections.abc import Callable


class DeadlineExceeded(TimeoutError):
    """The condition did not hold before the deadline."""


def wait_until(
    condition: Callable[[], bool],
    *,
    timeout: float,
    what: str,
    interval: float = 0.1,
    max_interval: float = 1.0,
    abort: Callable[[], str | None] | None = None,
) -> None:
    """Polls ``condition`` until it returns True, backing off up to ``max_interval``.

    Args:
        condition: returns True when done; exceptions count as "not yet".
        timeout: seconds before ``DeadlineExceeded`` is raised.
        what: names the condition in the error message.
        abort: returns a reason to stop waiting early (a process that exited), or None.
    """
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            if condition():
                return
        except Exception as exc:
            last_error = exc
        reason = abort() if abort else None
        if reason:
            raise DeadlineExceeded(f"gave up waiting for {what}: {reason}")
        now = time.monotonic()
        if now >= deadline:
            detail = f" (last error: {last_error})" if last_error else ""
            raise DeadlineExceeded(f"{what} not ready after {timeout:.0f}s{detail}")
        time.sleep(min(interval, deadline - now))
        interval = min(interval * 1.5, max_interval)
