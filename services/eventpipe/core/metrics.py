"""Prometheus metrics: the RPC metrics every server has, and the /metrics endpoint."""

from __future__ import annotations

from prometheus_client import Counter, Histogram, start_http_server

RPC_REQUESTS = Counter(
    "eventpipe_rpc_requests_total", "RPCs handled, by method and status code.", ["method", "code"]
)
RPC_LATENCY = Histogram(
    "eventpipe_rpc_latency_seconds",
    "RPC handling time, by method.",
    ["method"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)


def start_metrics_server(host: str, port: int) -> int:
    """Serves /metrics in a daemon thread; returns the bound port (useful with port 0)."""
    server, _thread = start_http_server(port, addr=host)
    return int(server.server_port)
