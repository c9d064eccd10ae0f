"""A real store process with one injected fault, for the liveness test.

Its consumer loop raises once it consumes a message keyed ``FAULT_KEY``: a stand-in for a bug
or fault outside the per-message boundary (content alone can no longer kill the loop, which
is the point). Everything else is ``python -m store``, unchanged.
"""

from __future__ import annotations

from typing import Any

from store.consumer import daemon
from store.consumer.batch import PreparedBatch
from store.server import main

FAULT_KEY = b"fault#loop"
_prepare = daemon.ConsumerDaemon._prepare


def _prepare_or_die(self: daemon.ConsumerDaemon, messages: list[Any]) -> PreparedBatch:
    if any(m.error() is None and m.key() == FAULT_KEY for m in messages):
        raise RuntimeError("injected fault: the consumer loop dies")
    return _prepare(self, messages)


if __name__ == "__main__":
    daemon.ConsumerDaemon._prepare = _prepare_or_die  # type: ignore[method-assign]
    raise SystemExit(main())
