"""Query read latency and throughput: GetEntity and ListEntityEvents, cached and uncached, over
gRPC (ghz) and REST through Envoy (hey), against the raw Bigtable point read and scan of the
same rows and the gRPC ``Health/Check`` floor of the same server, measured in the same run.

Self-contained on the local stack's Kafka and Bigtable emulator (`eventpipe stack up`): it seeds
its own tables (a unique prefix), starts its own query processes (cache on, once per worker
count measured; cache off, which is the "uncached" path) and an Envoy in front of the cached
one, and stops them after. Auth is on as production runs it: the processes verify an RS256
token of their own key pair (EVENTPIPE_AUTH_JWKS_FILE), Envoy checks it with ``jwt_authn``.

Cached ``GetEntity`` and the ``Health/Check`` floor are measured at 1, 8 and 32 requests in
flight (``CONCURRENCIES``), over up to ``CONNECTIONS`` connections, so several worker processes
sharing the port all get work. Each figure carries the CPU cores the query processes (the
supervisor and every worker, from /proc) and the load generator used during it, so per-core
figures are honest on a shared machine. The other figures keep the earlier shape: p50/p99 with
one request in flight, QPS at 8. The raw baselines use the same client library the service
uses (google-cloud-bigtable's data API) from Python threads.

``BENCH_QUERY_WORKERS`` (e.g. ``1,2``) names the worker counts of the cached process to
measure; default: the service's default (the CPU limit) in quick mode, that and 1 in full mode.
"""

from __future__ import annotations

import json
import os
import resource
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

from eventpipe.core.auth import generate_local_keys, mint_token
from eventpipe.core.config import CommonSettings
from eventpipe.core.server import default_worker_count
from eventpipe.core.storage import keys, tables
from eventpipe.core.topology import ensure_topology
from eventpipe.stack import install
from eventpipe.stack.components import DESCRIPTOR_SET, SERVICE_NAMES, Envoy, GrpcService
from eventpipe.stack.edge import EdgeAuth
from eventpipe.stack.probes import free_port
from google.cloud.bigtable.data import BigtableDataClient, ReadRowsQuery, RowRange
from google.cloud.bigtable.data import row_filters as rf
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2

from bench.harness import BenchContext, Measurement
from tests.helpers.http import metric_values
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
CONCURRENCIES = (1, 8, 32)
CONNECTIONS = 8
"""Most client connections per load run: a client such as Envoy opens several, and each lands
on one worker process (the kernel spreads connections over the sockets sharing the port)."""
PAGE_SIZE = 20
SERVICE = "eventpipe.query.v1.QueryService"
HEALTH_CHECK = "grpc.health.v1.Health/Check"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Figures:
    p50_ms: float
    p99_ms: float
    qps: float
    server_cores: float = 0.0
    client_cores: float = 0.0


def _median(figures: list[Figures]) -> Figures:
    return Figures(
        statistics.median(f.p50_ms for f in figures),
        statistics.median(f.p99_ms for f in figures),
        statistics.median(f.qps for f in figures),
        statistics.median(f.server_cores for f in figures),
        statistics.median(f.client_cores for f in figures),
    )


# ---------------------------------------------------------------- CPU time from /proc


def _process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (a supervisor and its workers)."""
    tree, pending = [], [pid]
    while pending:
        current = pending.pop()
        tree.append(current)
        for task in Path(f"/proc/{current}/task").glob("*/children"):
            try:
                pending.extend(int(child) for child in task.read_text().split())
            except OSError:
                continue
    return tree


def _cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of live processes (fields 14 and 15 of /proc/PID/stat)."""
    total = 0
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        total += int(fields[11]) + int(fields[12])
    return total / CLOCK_TICKS


def _children_cpu_seconds() -> float:
    """CPU time of this process's waited-for children (the load generator runs)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _with_cores(server_pid: int | None, run: Callable[[], Figures]) -> Figures:
    """Runs one load run and adds the cores the server's processes and the client used."""
    pids = _process_tree(server_pid) if server_pid else []
    server_before, client_before = _cpu_seconds(pids), _children_cpu_seconds()
    started = time.perf_counter()
    figures = run()
    elapsed = time.perf_counter() - started
    return Figures(
        figures.p50_ms,
        figures.p99_ms,
        figures.qps,
        (_cpu_seconds(pids) - server_before) / elapsed,
        (_children_cpu_seconds() - client_before) / elapsed,
    )


# ---------------------------------------------------------------- load tools


@dataclass(frozen=True)
class Target:
    """A gRPC server to load: its address, the token it wants and its process id."""

    address: str
    token: str
    pid: int | None = None


def _health_protoset(directory: Path) -> Path:
    """ghz needs a descriptor of the health service, which the project's set leaves out."""
    files = descriptor_pb2.FileDescriptorSet()
    health_pb2.DESCRIPTOR.CopyToProto(files.file.add())
    path = directory / "health.pb"
    path.write_bytes(files.SerializeToString())
    return path


def _ghz(
    target: Target,
    call: str,
    data: dict[str, object],
    total: int,
    concurrency: int,
    protoset: Path = DESCRIPTOR_SET,
) -> Figures:
    def run() -> Figures:
        result = subprocess.run(
            [
                str(install.tool_path("ghz")),
                "--insecure",
                # The descriptor set `make protos` builds: ghz's reflection client does not find
                # the services through grpcio's reflection service.
                "--protoset",
                str(protoset),
                "--call",
                call,
                "-d",
                json.dumps(data),
                "--metadata",
                json.dumps({"authorization": f"Bearer {target.token}"}),
                "-n",
                str(total),
                "-c",
                str(concurrency),
                "--connections",
                str(min(concurrency, CONNECTIONS)),
                "--skipFirst",
                str(min(100, total // 10)),
                "--format",
                "json",
                target.address,
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

    return _with_cores(target.pid, run)


def _hey(url: str, token: str, total: int, concurrency: int, envoy_pid: int | None) -> Figures:
    def run() -> Figures:
        result = subprocess.run(
            [
                *("hey", "-n", str(total), "-c", str(concurrency)),
                *("-H", f"Authorization: Bearer {token}", url),
            ],
            capture_output=True,
            text=True,
            check=True,
            timeout=600,
        )
        text = result.stdout
        if "[200]" not in text or any(
            f"[{c}]" in text for c in ("400", "401", "403", "404", "500", "503")
        ):
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

    return _with_cores(envoy_pid, run)


def _threads(call: Callable[[], object], total: int, concurrency: int) -> Figures:
    """The raw baseline: ``call`` from Python threads, like the service's own handlers. Its
    "server" cores are this process's own CPU time (the client library's work)."""
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

    cpu_before = time.process_time()
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
        (time.process_time() - cpu_before) / elapsed,
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


@dataclass
class Processes:
    """What the scenario started: cached servers by worker count, the uncached one, Envoy."""

    cached: dict[int, GrpcService]
    uncached: GrpcService
    rest_base: str
    envoy_pid: int | None
    metrics_ports: dict[int, int]


@contextmanager
def _processes(
    common: CommonSettings, run_dir: Path, jwks: Path, worker_counts: list[int]
) -> Iterator[Processes]:
    """Query processes with auth on: one cached per worker count, one uncached; Envoy with
    ``jwt_authn`` in front of the first cached one."""
    started: list[GrpcService | Envoy] = []
    metrics_ports: dict[int, int] = {}

    def query(cache_entries: int, workers: int) -> GrpcService:
        port, metrics_port = free_port(), free_port()
        metrics_ports[port] = metrics_port
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
                "EVENTPIPE_QUERY_METRICS_PORT": str(metrics_port),
                "EVENTPIPE_QUERY_CACHE_MAX_ENTRIES": str(cache_entries),
                "EVENTPIPE_QUERY_WORKERS": str(workers),
                "EVENTPIPE_AUTH_JWKS_FILE": str(jwks),
                "EVENTPIPE_LOG_LEVEL": "WARNING",
            },
        )
        started.append(service)
        service.start(90)
        return service

    try:
        cached = {workers: query(100_000, workers) for workers in worker_counts}
        uncached = query(0, 1)
        front = cached[worker_counts[0]]
        upstreams = {name: free_port() for name in SERVICE_NAMES} | {"query": front.port}
        envoy = Envoy(
            run_dir,
            port=free_port(),
            admin_port=free_port(),
            upstream_ports=upstreams,
            auth=EdgeAuth(jwks),
        )
        started.append(envoy)
        envoy.start()
        yield Processes(
            cached,
            uncached,
            envoy.base_url,
            envoy.pid,
            {workers: metrics_ports[service.port] for workers, service in cached.items()},
        )
    finally:
        for component in reversed(started):
            component.stop()


def _wait_cache_on(metrics_port: int) -> None:
    """The cache turns on in every worker once its entity-changes consumer is positioned."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if metric_values(metrics_port).get("eventpipe_query_cache_suspended") == 0.0:
            return
        time.sleep(0.2)
    raise RuntimeError("the query cache did not turn on within 60 s")


def _worker_counts(quick: bool) -> list[int]:
    named = os.environ.get("BENCH_QUERY_WORKERS", "")
    if named.strip():
        return sorted({int(n) for n in named.split(",") if n.strip()})
    default = default_worker_count()
    return [default] if quick else sorted({1, default})


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
    worker_counts = _worker_counts(ctx.quick)

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

    def record(name: str, figures: Figures) -> None:
        results.setdefault(name, []).append(figures)

    def latency_and_throughput(latency: Figures, throughput: Figures) -> Figures:
        return Figures(
            latency.p50_ms,
            latency.p99_ms,
            throughput.qps,
            throughput.server_cores,
            throughput.client_cores,
        )

    with tempfile.TemporaryDirectory(prefix="bench-query-") as tmp:
        private_key, jwks = generate_local_keys(Path(tmp) / "keys")
        bearer = mint_token(private_key.read_bytes(), jwks, tenant_id=tenant, scopes=["query"])
        health_protoset = _health_protoset(Path(tmp))
        with _processes(common, Path(tmp), jwks, worker_counts) as procs:
            for metrics_port in procs.metrics_ports.values():
                _wait_cache_on(metrics_port)
            cached = {
                workers: Target(service.address, bearer, service.pid)
                for workers, service in procs.cached.items()
            }
            front = cached[worker_counts[0]]
            uncached = Target(procs.uncached.address, bearer, procs.uncached.pid)
            for _ in range(ctx.rounds):
                for what, call in (("point_read", raw_point_read), ("scan", raw_scan)):
                    record(
                        f"raw.{what}",
                        latency_and_throughput(
                            _threads(call, total, 1), _threads(call, total, CONCURRENCY)
                        ),
                    )
                for workers, target in cached.items():
                    for concurrency in CONCURRENCIES:
                        record(
                            f"GetEntity.grpc.cached.w{workers}.c{concurrency}",
                            _ghz(target, f"{SERVICE}/GetEntity", get_data, total, concurrency),
                        )
                        record(
                            f"Health.w{workers}.c{concurrency}",
                            _ghz(
                                target,
                                HEALTH_CHECK,
                                {"service": ""},
                                total,
                                concurrency,
                                health_protoset,
                            ),
                        )
                for method, data, path in (
                    ("GetEntity", get_data, rest_get),
                    ("ListEntityEvents", list_data, rest_list),
                ):
                    for label, target in (("cached", front), ("uncached", uncached)):
                        rpc = f"{SERVICE}/{method}"
                        record(
                            f"{method}.grpc.{label}",
                            latency_and_throughput(
                                _ghz(target, rpc, data, total, 1),
                                _ghz(target, rpc, data, total, CONCURRENCY),
                            ),
                        )
                    url = procs.rest_base + path
                    record(
                        f"{method}.rest.cached",
                        latency_and_throughput(
                            _hey(url, bearer, total, 1, procs.envoy_pid),
                            _hey(url, bearer, total, CONCURRENCY, procs.envoy_pid),
                        ),
                    )
    client.close()

    fig = {name: _median(values) for name, values in results.items()}
    measurements = _read_measurements(fig)
    measurements += _serving_measurements(fig, worker_counts)
    measurements[0].note = (
        f"auth on (RS256 token verified by each query process, jwt_authn at Envoy); "
        f"p50/p99 at 1 request in flight, QPS at {CONCURRENCY} unless a name says c1/c8/c32; "
        f"ghz (gRPC, up to {CONNECTIONS} connections) and hey (REST via Envoy) are Go clients, "
        f"the raw baselines Python threads using the service's client library; {total} "
        f"requests per figure, median of {ctx.rounds} rounds; rows: profile with 9 dimension "
        f"fields, pages of {PAGE_SIZE} enriched events; cores = CPU seconds / wall seconds "
        f"of the run, from /proc (server: the query supervisor and all its workers)"
    )
    return measurements


def _read_measurements(fig: dict[str, Figures]) -> list[Measurement]:
    """The per-read figures against the raw Bigtable reads (and REST against direct gRPC)."""
    measurements: list[Measurement] = []
    for method, raw in (("GetEntity", "raw.point_read"), ("ListEntityEvents", "raw.scan")):
        base = fig[raw]
        for label in ("grpc.cached", "grpc.uncached", "rest.cached"):
            f = fig[f"{method}.{label}"]
            # REST is compared with the same answer over direct gRPC: the Envoy overhead.
            ref_name = f"{method}.grpc.cached" if label == "rest.cached" else raw
            measurements += _compared(f"{method}.{label}", f, ref_name, fig[ref_name])
            cores_of = "envoy" if label.startswith("rest") else "query"
            measurements.append(_cores(f"{method}.{label}.{cores_of}_cores", f.server_cores))
        measurements += _compared(raw, base)
        measurements.append(_cores(f"{raw}.bench_process_cores", base.server_cores))
    return measurements


STATS = (("p50_ms", "ms", False), ("p99_ms", "ms", False), ("qps", "req/s", True))
"""Each figure's statistics: field, unit, whether higher is better."""


def _compared(
    name: str, figures: Figures, ref_name: str | None = None, ref: Figures | None = None
) -> list[Measurement]:
    """p50, p99 and QPS of ``name``, each against the same statistic of ``ref`` if given."""
    measurements = []
    for stat, unit, better in STATS:
        short = stat.removesuffix("_ms")
        measurements.append(
            Measurement(
                name=f"{name}.{short}",
                value=getattr(figures, stat),
                unit=unit,
                baseline_name=f"{ref_name}.{short}" if ref is not None else None,
                baseline_value=getattr(ref, stat) if ref is not None else None,
                higher_is_better=better,
            )
        )
    return measurements


def _cores(name: str, value: float) -> Measurement:
    return Measurement(name=name, value=value, unit="cores", higher_is_better=False)


def _serving_measurements(fig: dict[str, Figures], worker_counts: list[int]) -> list[Measurement]:
    """Cached GetEntity at each concurrency against the Health/Check floor of the same server,
    with requests/s per core the query processes used."""
    measurements: list[Measurement] = []
    for workers in worker_counts:
        for concurrency in CONCURRENCIES:
            name = f"GetEntity.grpc.cached.w{workers}.c{concurrency}"
            floor = f"Health.w{workers}.c{concurrency}"
            f, h = fig[name], fig[floor]
            measurements += _compared(name, f, floor, h)
            measurements.append(
                Measurement(
                    name=f"{name}.qps_per_query_core",
                    value=f.qps / f.server_cores if f.server_cores else 0.0,
                    unit="req/s/core",
                    baseline_name=f"{floor}.qps_per_query_core",
                    baseline_value=h.qps / h.server_cores if h.server_cores else None,
                )
            )
            for who, value_of in (("query", "server_cores"), ("ghz", "client_cores")):
                for label, figures in ((name, f), (floor, h)):
                    measurements.append(_cores(f"{label}.{who}_cores", getattr(figures, value_of)))
    return measurements
