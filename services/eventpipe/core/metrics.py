"""Prometheus metrics: the RPC metrics every server has, and the /metrics endpoint.

Under a supervisor (several worker processes, docs/serving.md) every worker writes its values
to files in ``PROMETHEUS_MULTIPROC_DIR`` and the supervisor's /metrics adds them up: counters
and histograms sum, and each gauge says how (``multiprocess_mode``).
"""

from __future__ import annotations

import threading

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    start_http_server,
)

RPC_REQUESTS = Counter(
    "eventpipe_rpc_requests_total", "RPCs handled, by method and status code.", ["method", "code"]
)
RPC_LATENCY = Histogram(
    "eventpipe_rpc_latency_seconds",
    "RPC handling time, by method.",
    ["method"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)

SERVER_WORKERS = Gauge(
    "eventpipe_server_workers",
    "Server processes serving the port (1 without a supervisor).",
    multiprocess_mode="livesum",
)


def start_metrics_server(host: str, port: int) -> int:
    """Serves /metrics in a daemon thread; returns the bound port (useful with port 0)."""
    server, _thread = start_http_server(port, addr=host)
    return int(server.server_port)


FUNCTION_GAUGE_INTERVAL_SECONDS = 0.5
"""How often a worker writes its callback gauges' values where the supervisor reads them."""


def write_function_gauges(registry: CollectorRegistry = REGISTRY) -> None:
    """A gauge given ``set_function`` computes its value when collected, in its own process;
    under a supervisor the supervisor collects from the workers' files, so each worker writes
    those values there."""
    for collector in list(getattr(registry, "_collector_to_names", {})):
        if isinstance(collector, Gauge) and "_child_samples" in vars(collector):
            for sample in collector._child_samples():
                collector._value.set(sample.value)


def keep_function_gauges_written(stopped: threading.Event) -> None:
    """Runs ``write_function_gauges`` every FUNCTION_GAUGE_INTERVAL_SECONDS until ``stopped``."""

    def loop() -> None:
        while not stopped.wait(FUNCTION_GAUGE_INTERVAL_SECONDS):
            write_function_gauges()

    threading.Thread(target=loop, name="function-gauges", daemon=True).start()
