"""Query read latency and throughput: GetEntity and ListEntityEvents, cached and uncached, over
gRPC (ghz) and REST through Envoy (hey), against the raw Bigtable point read and scan of the
same rows measured in the same run.

Self-contained on the local stack's Kafka and Bigtable emulator (`eventpipe stack up`): it seeds
its own tables (a unique prefix), starts two query processes of its own (cache on; cache off,
which is the "uncached" path) and an Envoy in front of the cached one, and stops them after.

Latency (p50/p99) is measured with one request at a time, so it is the cost of a request, not
queueing on this 2-core machine; throughput (QPS) with ``CONCURRENCY`` requests in flight.
The raw baselines use the same client library the service uses (google-cloud-bigtable's data
API) from Python threads.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from eventpipe.core.config import CommonSettings
from eventpipe.core.storage import keys, tables
from eventpipe.core.topology import ensure_topology
from eventpipe.stack import install
from eventpipe.stack.components import DESCRIPTOR_SET, SERVICE_NAMES, Envoy, GrpcService
from eventpipe.stack.probes import free_port
from google.cloud.bigtable.data import BigtableDataClient, ReadRowsQuery, RowRange
from google.cloud.bigtable.data import row_filters as rf

from bench.harness import BenchContext, Measurement
from tests.integration.query.loader import RowLoader
from tests.unit.query.rows import (
    BASE_MICROS,
    HOUR,
    enriched_event_row,
    make_event,
    number,
    profile_row,
    string,
)

NAME = "query_reads"
CONCURRENCY = 8
PAGE_SIZE = 20
SERVICE = "eventpipe.query.v1.QueryService"


@dataclass(frozen=True)
class Figures:
    p50_ms: float
    p99_ms: float
    qps: float


def _median(figures: list[Figures]) -> Figures:
    return Figures(
        statistics.median(f.p50_ms for f in figures),
        statistics.median(f.p99_ms for f in figures),
        statistics.median(f.qps for f in figures),
    )


# ---------------------------------------------------------------- load tools


def _ghz(
    address: str, method: str, data: dict[str, object], total: int, concurrency: int
) -> Figures:
    result = subprocess.run(
        [
            str(install.tool_path("ghz")),
            "--insecure",
            # The descriptor set `make protos` builds: ghz's reflection client does not find
            # the services through grpcio's reflection service.
            "--protoset",
            str(DESCRIPTOR_SET),
            "--call",
            f"{SERVICE}/{method}",
            "-d",
            json.dumps(data),
            "-n",
            str(total),
            "-c",
            str(concurrency),
            "--connections",
            "1",
            "--skipFirst",
            str(min(100, total // 10)),
            "--format",
            "json",
            address,
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    report = json.loads(result.stdout)
    if report.get("statusCodeDistribution", {}).keys() - {"OK"}:
        raise RuntimeError(f"ghz saw errors: {report['statusCodeDistribution']}")
    percentiles = {p["percentage"]: p["latency"] / 1e6 for p in report["latencyDistribution"]}
    return Figures(percentiles[50], percentiles[99], float(report["rps"]))


def _hey(url: str, total: int, concurrency: int) -> Figures:
    result = subprocess.run(
        ["hey", "-n", str(total), "-c", str(concurrency), url],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    text = result.stdout
    if "[200]" not in text or any(f"[{c}]" in text for c in ("400", "404", "500", "503")):
        raise RuntimeError(f"hey saw errors:\n{text}")
    percentiles: dict[int, float] = {}
    qps = 0.0
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("Requests/sec:"):
            qps = float(line.split()[1])
        for p in (50, 99):
            if line.startswith(f"{p}% in"):
                percentiles[p] = float(line.split()[2]) * 1000
    return Figures(percentiles[50], percentiles[99], qps)


def _threads(call: Callable[[], object], total: int, concurrency: int) -> Figures:
    """The raw baseline: ``call`` from Python threads, like the service's own handlers."""
    latencies: list[float] = []
    lock = threading.Lock()
    per_thread = max(1, total // concurrency)

    def worker() -> None:
        mine = []
        for _ in range(per_thread):
            started = time.perf_counter()
            call()
            mine.append(time.perf_counter() - started)
        with lock:
            latencies.extend(mine)

    started = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    latencies.sort()
    return Figures(
        latencies[len(latencies) // 2] * 1000,
        latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
        len(latencies) / elapsed,
    )


# ---------------------------------------------------------------- the environment


def _common(ctx: BenchContext, token: str) -> CommonSettings:
    return ctx.common.model_copy(
        update={"table_prefix": f"bench_q{token}_", "topic_prefix": f"bench.q{token}."}
    )


def _seed(common: CommonSettings, tenant: str, entities: int) -> None:
    loader = RowLoader(common)
    profiles, events = [], []
    for n in range(entities):
        entity = f"user-{n}"
        profiles.append(
            profile_row(
                tenant,
                entity,
                fields={f"users.field{i}": string(f"value-{i}") for i in range(8)}
                | {"users.score": number(n)},
                first_seen=BASE_MICROS,
                last_seen=BASE_MICROS + HOUR,
                update_time=BASE_MICROS + 2 * HOUR,
                event_count=PAGE_SIZE,
                type_counts={"page_view": 15, "purchase": 5},
                totals={"revenue": 123.0},
            )
        )
        for i in range(PAGE_SIZE):
            event = make_event(
                tenant,
                entity,
                f"evt-{i}",
                "purchase" if i % 4 == 0 else "page_view",
                BASE_MICROS + i * 60_000_000,
                {"price": number(9.99), "sku": string(f"sku-{i}")},
            )
            events.append(enriched_event_row(event, {"users.plan": string("pro")}))
    loader.write(tables.ENTITY_PROFILES_TABLE, profiles)
    loader.write(tables.ENRICHED_EVENTS_TABLE, events)
    loader.close()


@contextmanager
def _processes(common: CommonSettings, run_dir: Path) -> Iterator[tuple[str, str, str]]:
    """(cached gRPC address, uncached gRPC address, REST base URL via Envoy)."""
    started: list[GrpcService | Envoy] = []

    def query(cache_entries: int) -> GrpcService:
        port = free_port()
        service = GrpcService(
            "query",
            run_dir / f"query-{port}",
            port,
            {
                "EVENTPIPE_KAFKA_BOOTSTRAP_SERVERS": common.kafka_bootstrap_servers,
                "BIGTABLE_EMULATOR_HOST": os.environ["BIGTABLE_EMULATOR_HOST"],
                "EVENTPIPE_TOPIC_PREFIX": common.topic_prefix,
                "EVENTPIPE_TABLE_PREFIX": common.table_prefix,
                "EVENTPIPE_QUERY_HOST": "127.0.0.1",
                "EVENTPIPE_QUERY_PORT": str(port),
                "EVENTPIPE_QUERY_METRICS_PORT": str(free_port()),
                "EVENTPIPE_QUERY_CACHE_MAX_ENTRIES": str(cache_entries),
                "EVENTPIPE_LOG_LEVEL": "WARNING",
            },
        )
        started.append(service)
        service.start(90)
        return service

    try:
        cached, uncached = query(100_000), query(0)
        upstreams = {name: free_port() for name in SERVICE_NAMES} | {"query": cached.port}
        envoy = Envoy(run_dir, port=free_port(), admin_port=free_port(), upstream_ports=upstreams)
        started.append(envoy)
        envoy.start()
        yield cached.address, uncached.address, envoy.base_url
    finally:
        for component in reversed(started):
            component.stop()


def _wait_cache_on(address: str, tenant: str) -> None:
    """The cache turns on once the entity-changes consumer is positioned: until a repeat read
    stops costing Bigtable time, keep asking (bounded)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        figures = _ghz(address, "GetEntity", {"tenant_id": tenant, "entity_id": "user-0"}, 200, 1)
        if figures.p50_ms < 0.8:
            return
        time.sleep(0.5)


# ---------------------------------------------------------------- the scenario


def run(ctx: BenchContext) -> list[Measurement]:
    if shutil.which("hey") is None:
        raise RuntimeError("hey is not installed: apt-get install -y hey")
    total = 1000 if ctx.quick else 5000
    entities = 50 if ctx.quick else 200
    token = uuid.uuid4().hex[:8]
    tenant = f"bench-{token}"
    common = _common(ctx, token)
    ensure_topology(common)
    _seed(common, tenant, entities)

    client = BigtableDataClient(project=common.bigtable_project)
    profiles = client.get_table(
        common.bigtable_instance, common.table_prefix + tables.ENTITY_PROFILES_TABLE
    )
    events = client.get_table(
        common.bigtable_instance, common.table_prefix + tables.ENRICHED_EVENTS_TABLE
    )
    latest = rf.CellsColumnLimitFilter(1)
    profile_key = keys.row_key_for_profile(tenant, "user-0")
    start_key, end_key = keys.event_key_range(tenant, "user-0", None, None)

    def raw_point_read() -> object:
        return profiles.read_row(profile_key, row_filter=latest)

    def raw_scan() -> object:
        query = ReadRowsQuery(
            row_ranges=RowRange(start_key=start_key, end_key=end_key),
            limit=PAGE_SIZE + 1,
            row_filter=latest,
        )
        return events.read_rows(query)

    get_data: dict[str, object] = {"tenant_id": tenant, "entity_id": "user-0"}
    list_data: dict[str, object] = {
        "tenant_id": tenant,
        "entity_id": "user-0",
        "page_size": PAGE_SIZE,
    }
    rest_get = f"/v1/tenants/{tenant}/entities/user-0"
    rest_list = f"/v1/tenants/{tenant}/entities/user-0/events?page_size={PAGE_SIZE}"

    results: dict[str, list[Figures]] = {}

    def record(name: str, latency: Figures, throughput: Figures) -> None:
        results.setdefault(name, []).append(Figures(latency.p50_ms, latency.p99_ms, throughput.qps))

    with (
        tempfile.TemporaryDirectory(prefix="bench-query-") as tmp,
        _processes(common, Path(tmp)) as (cached, uncached, rest_base),
    ):
        _wait_cache_on(cached, tenant)
        for _ in range(ctx.rounds):
            for what, call in (("point_read", raw_point_read), ("scan", raw_scan)):
                record(f"raw.{what}", _threads(call, total, 1), _threads(call, total, CONCURRENCY))
            for method, data, path in (
                ("GetEntity", get_data, rest_get),
                ("ListEntityEvents", list_data, rest_list),
            ):
                for label, address in (("cached", cached), ("uncached", uncached)):
                    record(
                        f"{method}.grpc.{label}",
                        _ghz(address, method, data, total, 1),
                        _ghz(address, method, data, total, CONCURRENCY),
                    )
                url = rest_base + path
                record(
                    f"{method}.rest.cached",
                    _hey(url, total, 1),
                    _hey(url, total, CONCURRENCY),
                )
    client.close()

    fig = {name: _median(values) for name, values in results.items()}
    measurements: list[Measurement] = []
    for method, raw in (("GetEntity", "raw.point_read"), ("ListEntityEvents", "raw.scan")):
        base = fig[raw]
        for label in ("grpc.cached", "grpc.uncached", "rest.cached"):
            f = fig[f"{method}.{label}"]
            # REST is compared with the same answer over direct gRPC: the Envoy overhead.
            ref_name = f"{method}.grpc.cached" if label == "rest.cached" else raw
            ref = fig[ref_name]
            for stat, unit, better in (
                ("p50_ms", "ms", False),
                ("p99_ms", "ms", False),
                ("qps", "req/s", True),
            ):
                measurements.append(
                    Measurement(
                        name=f"{method}.{label}.{stat.removesuffix('_ms')}",
                        value=getattr(f, stat),
                        unit=unit,
                        baseline_name=f"{ref_name}.{stat.removesuffix('_ms')}",
                        baseline_value=getattr(ref, stat),
                        higher_is_better=better,
                    )
                )
        for stat, unit in (("p50_ms", "ms"), ("p99_ms", "ms"), ("qps", "req/s")):
            measurements.append(
                Measurement(
                    name=f"{raw}.{stat.removesuffix('_ms')}",
                    value=getattr(base, stat),
                    unit=unit,
                    higher_is_better=stat == "qps",
                )
            )
    measurements[0].note = (
        f"p50/p99 at 1 request in flight, QPS at {CONCURRENCY}; ghz (gRPC) and hey (REST via "
        f"Envoy) are Go clients, the raw baselines Python threads using the service's client "
        f"library; {total} requests per figure, median of {ctx.rounds} rounds; rows: profile "
        f"with 9 dimension fields, pages of {PAGE_SIZE} enriched events"
    )
    return measurements
