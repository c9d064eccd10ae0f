"""The one server bootstrap all four services use.

``create_server`` wires a gRPC server (interceptors, health, reflection, message limits) and
returns it with its bound port; ``serve`` runs it until SIGTERM/SIGINT and shuts down
gracefully: health turns NOT_SERVING, background workers stop taking work, in-flight RPCs
get ``shutdown_grace_seconds`` to finish, then the process exits 0.

Health is SERVING only while every readiness check passes (Kafka, Bigtable, ... reachable;
with auth on, a JWKS fetched at least once); a monitor thread re-checks them, so a dependency
outage turns the service NOT_SERVING and its return turns it SERVING again.

Unary RPCs run on ``max_workers`` threads; streaming RPCs run on a pool of their own, sized
``max_streams`` plus a few threads that only answer refusals, so open streams can never take
the threads unary calls (and health checks) need. ``StreamLimitInterceptor`` caps open streams
per server, tenant and connection (see docs/ingest.md).

With ``workers`` > 1 (query and ingest: ``EVENTPIPE_<SERVICE>_WORKERS``, default the CPU limit)
``run_service`` becomes a supervisor: it starts that many worker processes, each a whole server
on the same port (SO_REUSEPORT: the kernel spreads connections over them), serves /metrics for
all of them (prometheus_client's multiprocess mode), forwards SIGTERM to every worker and waits
for each to drain, and restarts a worker that dies. Each worker reports its readiness and
liveness on a shared board, and every worker's health answers for all of them: SERVING only
while every worker is ready. See docs/serving.md.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import mmap
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from pydantic import Field

from eventpipe.core.auth import AuthInterceptor, AuthSettings, TokenVerifier, current_tenant
from eventpipe.core.config import CommonSettings, ConfigError, ServiceSettings, load_settings
from eventpipe.core.interceptors import (
    ErrorMappingInterceptor,
    SharedStreamCounts,
    StreamingInterceptor,
    StreamLimitInterceptor,
    StreamLimits,
)
from eventpipe.core.logging import configure_logging
from eventpipe.core.metrics import (
    SERVER_WORKERS,
    keep_function_gauges_written,
    start_metrics_server,
)

log = logging.getLogger(__name__)

STREAM_REFUSAL_THREADS = 8
"""Threads of the streams' pool beyond ``max_streams``: a stream over a limit still needs a
thread for the moment it takes to refuse it."""

LIVENESS_SERVICE = "liveness"
"""Health name that is SERVING while the process runs (Kubernetes liveness probes use it)."""

ReadinessCheck = Callable[[], None]
"""Raises (any exception) when a dependency is not reachable."""

LivenessCheck = Callable[[], None]
"""Raises when the process can no longer do its work by itself (a background loop died):
liveness then turns NOT_SERVING so Kubernetes restarts the pod."""


class BackgroundWorker(Protocol):
    """Work a service runs beside its RPCs, such as the store's consumer daemon."""

    def start(self) -> None: ...

    def stop(self, timeout: float) -> None:
        """Stops taking new work and finishes what is in flight within ``timeout``."""
        ...


@dataclass
class ServiceDefinition:
    """What a service contributes to the shared bootstrap."""

    name: str
    grpc_service_names: Sequence[str]
    register: Callable[[grpc.Server], None]
    readiness_checks: Sequence[ReadinessCheck] = ()
    # Failing liveness also fails readiness, with the same reason.
    liveness_checks: Sequence[LivenessCheck] = ()
    workers: Sequence[BackgroundWorker] = ()
    interceptors: Sequence[grpc.ServerInterceptor] = ()
    on_shutdown: Sequence[Callable[[], None]] = ()


@dataclass
class RunningServer:
    """A started server: its gRPC port, metrics port and health servicer."""

    server: grpc.Server
    port: int
    metrics_port: int
    definition: ServiceDefinition
    settings: ServiceSettings
    health: health.HealthServicer
    readiness_interval: float = 2.0
    # Set in a worker of a supervisor: where every worker's state is shared.
    board: WorkerBoard | None = None
    worker_index: int = 0
    _stopped: threading.Event = field(default_factory=threading.Event)
    _monitor: threading.Thread | None = None

    def start_readiness_monitor(self) -> None:
        self._monitor = threading.Thread(
            target=self._monitor_readiness, name=f"{self.definition.name}-readiness", daemon=True
        )
        self._monitor.start()

    def _set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", *self.definition.grpc_service_names):
            self.health.set(name, status)

    def check_alive(self) -> str | None:
        """Runs the liveness checks; returns the first failure's description or None."""
        return _first_failure(self.definition.liveness_checks)

    def check_ready(self) -> str | None:
        """Runs the liveness, then the readiness checks; returns the first failure or None."""
        return self.check_alive() or _first_failure(self.definition.readiness_checks)

    def _check_all(self) -> tuple[str | None, str | None]:
        """(liveness failure, readiness failure) of this process and, under a supervisor, of
        every sibling worker: a probe reaches one worker, but must answer for all of them."""
        dead, failure = self.check_alive(), self.check_ready()
        if self.board is None:
            return dead, failure
        self.board.publish(
            self.worker_index,
            WorkerState.DEAD
            if dead
            else (WorkerState.READY if failure is None else WorkerState.NOT_READY),
        )
        return dead or self.board.first_dead(), failure or self.board.first_not_ready()

    def _monitor_readiness(self) -> None:
        was_ready: bool | None = None
        was_alive = True
        while not self._stopped.is_set():
            dead, failure = self._check_all()
            if dead is not None and was_alive and not self._stopped.is_set():
                self.health.set(LIVENESS_SERVICE, health_pb2.HealthCheckResponse.NOT_SERVING)
                log.error("not alive: liveness NOT_SERVING", extra={"reason": dead})
                was_alive = False
            ready = failure is None
            if ready != was_ready and not self._stopped.is_set():
                self._set_serving(ready)
                if ready:
                    log.info("dependencies reachable: SERVING")
                else:
                    log.warning("not ready: NOT_SERVING", extra={"reason": failure})
                was_ready = ready
            self._stopped.wait(self.readiness_interval if ready else 0.5)

    def stop(self, grace: float | None = None) -> None:
        """Graceful stop: NOT_SERVING, workers drain, in-flight RPCs finish."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        grace = self.settings.shutdown_grace_seconds if grace is None else grace
        self.health.enter_graceful_shutdown()
        if self.board is not None:
            self.board.publish(self.worker_index, WorkerState.NOT_READY)
        for worker in self.definition.workers:
            worker.stop(grace)
        self.server.stop(grace).wait()
        for hook in self.definition.on_shutdown:
            try:
                hook()
            except Exception:
                log.exception("shutdown hook failed")


def _first_failure(checks: Sequence[Callable[[], None]]) -> str | None:
    for check in checks:
        try:
            check()
        except Exception as exc:
            return f"{getattr(check, '__name__', 'check')}: {exc}"
    return None


class StreamPoolInterceptor(StreamingInterceptor):
    """Puts every streaming RPC on ``pool`` (grpcio's per-method ``experimental_thread_pool``),
    apart from the unary workers. Must be the first interceptor: grpcio reads the pool off the
    outermost handler."""

    def __init__(self, pool: futures.ThreadPoolExecutor) -> None:
        self.pool = pool

    def wrap(
        self, handler: grpc.RpcMethodHandler, behavior: Callable[..., Any]
    ) -> Callable[..., Any]:
        def on_pool(request: Any, context: grpc.ServicerContext) -> Any:
            return behavior(request, context)

        on_pool.experimental_thread_pool = self.pool  # type: ignore[attr-defined]
        return on_pool


def create_server(
    definition: ServiceDefinition,
    settings: ServiceSettings,
    *,
    start_metrics: bool = True,
    worker: WorkerRole | None = None,
) -> RunningServer:
    """Builds and starts the server (bound, health NOT_SERVING until checks pass).

    ``worker``: this process is one of a supervisor's workers; it shares the port with its
    siblings and its health answers for all of them (the supervisor serves /metrics).
    """
    options = [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        # Off for a single process, so a second copy on the same port fails to start instead
        # of silently taking half the connections.
        ("grpc.so_reuseport", 1 if worker is not None else 0),
    ]
    stream_threads = settings.max_streams + STREAM_REFUSAL_THREADS
    stream_pool = futures.ThreadPoolExecutor(
        max_workers=stream_threads, thread_name_prefix=f"{definition.name}-stream"
    )
    auth = load_settings(AuthSettings)
    auth_interceptors: list[grpc.ServerInterceptor] = []
    if auth.enabled:
        verifier = TokenVerifier(auth)
        auth_interceptors.append(AuthInterceptor(verifier))
        verifier.start()
        definition = dataclasses.replace(
            definition,
            readiness_checks=[*definition.readiness_checks, verifier.keys.check_ready],
            on_shutdown=[*definition.on_shutdown, verifier.stop],
        )
    stream_limits = StreamLimits(
        settings.max_streams,
        settings.max_streams_per_tenant,
        settings.max_streams_per_connection,
        shared=worker.stream_counts(settings.max_streams) if worker is not None else None,
    )
    server = grpc.server(
        futures.ThreadPoolExecutor(
            max_workers=settings.max_workers, thread_name_prefix=definition.name
        ),
        # Outermost first. Limits sit inside the error mapping, so refusals get RetryInfo.
        interceptors=[
            StreamPoolInterceptor(stream_pool),
            *auth_interceptors,
            *definition.interceptors,
            ErrorMappingInterceptor(),
            StreamLimitInterceptor(stream_limits, current_tenant),
        ],
        options=options,
        maximum_concurrent_rpcs=settings.max_workers * 8 + stream_threads,
    )
    definition = dataclasses.replace(
        definition,
        on_shutdown=[*definition.on_shutdown, lambda: stream_pool.shutdown(wait=False)],
    )
    definition.register(server)

    health_servicer = health.HealthServicer(
        experimental_non_blocking=True,
        experimental_thread_pool=futures.ThreadPoolExecutor(max_workers=2),
    )
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", *definition.grpc_service_names):
        health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    # Liveness only says the process answers: a dependency outage must not get pods restarted.
    health_servicer.set(LIVENESS_SERVICE, health_pb2.HealthCheckResponse.SERVING)

    reflection.enable_server_reflection(
        (*definition.grpc_service_names, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    port = server.add_insecure_port(f"{settings.host}:{settings.port}")
    if port == 0:
        raise RuntimeError(f"could not bind {settings.host}:{settings.port}")
    metrics_port = (
        start_metrics_server(settings.host, settings.metrics_port)
        if start_metrics and worker is None
        else 0
    )
    server.start()
    SERVER_WORKERS.set(1)
    running = RunningServer(
        server=server,
        port=port,
        metrics_port=metrics_port,
        definition=definition,
        settings=settings,
        health=health_servicer,
        board=worker.board() if worker is not None else None,
        worker_index=worker.index if worker is not None else 0,
    )
    for background in definition.workers:
        background.start()
    running.start_readiness_monitor()
    if worker is not None:
        keep_function_gauges_written(running._stopped)
    log.info(
        "listening",
        extra={
            "port": port,
            "metrics_port": metrics_port,
            "services": list(definition.grpc_service_names),
        },
    )
    return running


def serve(
    definition: ServiceDefinition, settings: ServiceSettings, worker: WorkerRole | None = None
) -> int:
    """Runs the service until SIGTERM or SIGINT, then shuts down gracefully; returns 0."""
    running = create_server(definition, settings, worker=worker)
    done = threading.Event()

    def _on_signal(signum: int, _frame: object) -> None:
        log.info("shutting down", extra={"signal": signal.Signals(signum).name})
        done.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    done.wait()
    running.stop()
    log.info("stopped", extra={"worker": worker.index} if worker is not None else {})
    return 0


ServiceSettingsT = TypeVar("ServiceSettingsT", bound=ServiceSettings)


def run_service(
    name: str,
    settings_class: type[ServiceSettingsT],
    build: Callable[[ServiceSettingsT, CommonSettings], ServiceDefinition],
) -> int:
    """What every service's ``__main__`` does: load and validate config, log, serve."""
    try:
        common = load_settings(CommonSettings)
        settings = load_settings(settings_class)
    except ConfigError as exc:
        print(exc.message, file=sys.stderr)
        return 2
    configure_logging(name, common.log_level)
    worker = WorkerRole.from_environment()
    if worker is None and settings.workers > 1:
        return Supervisor(name, settings).run()
    if worker is not None:
        worker.exit_with_supervisor()
    return serve(build(settings, common), settings, worker)


# ---------------------------------------------------------------- worker processes


def cpu_limit(cgroup_root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """The container's CPU limit in whole cores (rounded up), from cgroup v2 ``cpu.max`` or
    cgroup v1 ``cpu.cfs_quota_us``; None when there is no limit or no cgroup to read."""
    try:
        quota, period = (cgroup_root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else max(1, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((cgroup_root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((cgroup_root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return None if quota_us <= 0 else max(1, math.ceil(quota_us / period_us))


def default_worker_count() -> int:
    """Worker processes by default: the CPU limit, else every CPU the machine has."""
    return cpu_limit() or os.cpu_count() or 1


def workers_field() -> Any:
    """The ``workers`` setting of a service that scales with cores (query, ingest); the others
    keep ``ServiceSettings.workers`` (1)."""
    return Field(
        default_factory=default_worker_count,
        ge=1,
        le=64,
        description="Server processes sharing the port under one supervisor (docs/serving.md); "
        "default: the CPU limit from cgroups, else the machine's CPUs; 1: a single process.",
    )


class WorkerState:
    """One byte per worker on the board."""

    STARTING = 0
    READY = 1
    NOT_READY = 2
    DEAD = 3
    """Its liveness failed: the pod must be restarted, as with a single process."""


class WorkerBoard:
    """Every worker's state, one byte each, in a file all the workers map."""

    def __init__(self, path: Path, count: int) -> None:
        with path.open("r+b") as file:
            self._map = mmap.mmap(file.fileno(), count)
        self.count = count

    @classmethod
    def create(cls, path: Path, count: int) -> WorkerBoard:
        path.write_bytes(bytes([WorkerState.STARTING]) * count)
        return cls(path, count)

    def publish(self, index: int, state: int) -> None:
        self._map[index] = state

    def state(self, index: int) -> int:
        return self._map[index]

    def first_dead(self) -> str | None:
        for index in range(self.count):
            if self._map[index] == WorkerState.DEAD:
                return f"worker {index} is not alive"
        return None

    def first_not_ready(self) -> str | None:
        for index in range(self.count):
            if self._map[index] != WorkerState.READY:
                return f"worker {index} is not ready"
        return None


WORKER_ENV = "EVENTPIPE_WORKER_OF_SUPERVISOR"
"""Set by the supervisor in each worker's environment (JSON: index, count, board, pid);
internal, never set by hand."""
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


@dataclass(frozen=True)
class WorkerRole:
    """This process is worker ``index`` of ``count`` under the supervisor ``supervisor_pid``."""

    index: int
    count: int
    board_path: Path
    supervisor_pid: int

    @classmethod
    def from_environment(cls) -> WorkerRole | None:
        raw = os.environ.get(WORKER_ENV)
        if not raw:
            return None
        fields = json.loads(raw)
        return cls(fields["index"], fields["count"], Path(fields["board"]), fields["pid"])

    def environment(self) -> str:
        return json.dumps(
            {
                "index": self.index,
                "count": self.count,
                "board": str(self.board_path),
                "pid": self.supervisor_pid,
            }
        )

    def board(self) -> WorkerBoard:
        return WorkerBoard(self.board_path, self.count)

    @property
    def stream_counts_path(self) -> Path:
        return self.board_path.with_name("streams.counts")

    def stream_counts(self, max_streams: int) -> SharedStreamCounts:
        return SharedStreamCounts(self.stream_counts_path, self.index, self.count, max_streams)

    def exit_with_supervisor(self) -> None:
        """A worker never outlives its supervisor (even a SIGKILLed one): the kernel sends it
        SIGTERM when the supervisor dies, which drains it like any SIGTERM."""
        try:
            import ctypes

            pr_set_pdeathsig = 1
            ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
        except (OSError, AttributeError):
            log.warning("cannot ask to be stopped with the supervisor")
        if os.getppid() != self.supervisor_pid:
            raise SystemExit(0)


def reserve_port(host: str, port: int) -> tuple[socket.socket, int]:
    """Binds (never listens on) ``host:port`` with SO_REUSEPORT: the port is chosen (port 0)
    and held for the workers, and a port taken by another program fails here, at start."""
    family, kind, proto, _name, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    reserved = socket.socket(family, kind, proto)
    reserved.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    reserved.bind(address)
    return reserved, int(reserved.getsockname()[1])


class WorkersCollector:
    """prometheus_client's MultiProcessCollector, with one change: a gauge that declares no
    ``multiprocess_mode`` (the library's "all": one series per pid, dead ones included) is
    summed over the live workers, as one process's gauge would read."""

    def __init__(self, directory: Path, live_pids: Callable[[], set[int]]) -> None:
        from prometheus_client.multiprocess import MultiProcessCollector

        self._collector = MultiProcessCollector(None, path=str(directory))
        self._live_pids = live_pids

    def collect(self) -> Any:
        from prometheus_client.samples import Sample

        live = {str(pid) for pid in self._live_pids()}
        for metric in self._collector.collect():
            if metric.type == "gauge" and any("pid" in s.labels for s in metric.samples):
                sums: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
                for sample in metric.samples:
                    if sample.labels.get("pid") not in live:
                        continue
                    labels = tuple(sorted((k, v) for k, v in sample.labels.items() if k != "pid"))
                    key = (sample.name, labels)
                    sums[key] = sums.get(key, 0.0) + sample.value
                metric.samples = [
                    Sample(name, dict(labels), value) for (name, labels), value in sums.items()
                ]
            yield metric


def serve_multiprocess_metrics(
    host: str, port: int, directory: Path, live_pids: Callable[[], set[int]]
) -> int:
    """/metrics added up over every worker's files in ``directory``; returns the bound port."""
    from prometheus_client import CollectorRegistry, start_http_server

    registry = CollectorRegistry()
    registry.register(WorkersCollector(directory, live_pids))  # type: ignore[arg-type]
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return int(server.server_port)


RESTART_DELAY_SECONDS = 1.0
"""Least time between two starts of the same worker, so a crashing worker cannot spin."""


class Supervisor:
    """Runs ``settings.workers`` copies of service ``name`` (``python -m name``) on one port."""

    def __init__(self, name: str, settings: ServiceSettings) -> None:
        self.name = name
        self.settings = settings
        self.prefix = str(type(settings).model_config.get("env_prefix", ""))
        self._stopping = threading.Event()
        self._workers: list[subprocess.Popen[bytes] | None] = [None] * settings.workers
        self._started_at = [0.0] * settings.workers

    def run(self) -> int:
        reserved, port = reserve_port(self.settings.host, self.settings.port)
        given = os.environ.get(MULTIPROC_ENV)
        directory = Path(given) if given else Path(tempfile.mkdtemp(prefix=f"{self.name}-metrics-"))
        directory.mkdir(parents=True, exist_ok=True)
        for stale in directory.glob("*.db"):  # a previous run's counters would add up again
            stale.unlink()
        board_path = directory / "workers.board"
        self.board = WorkerBoard.create(board_path, self.settings.workers)
        SharedStreamCounts.create(
            board_path.with_name("streams.counts"), self.settings.workers, self.settings.max_streams
        )
        metrics_port = serve_multiprocess_metrics(
            self.settings.host, self.settings.metrics_port, directory, self._live_pids
        )
        self._env = {
            **os.environ,
            MULTIPROC_ENV: str(directory),
            f"{self.prefix}PORT": str(port),
        }
        self._board_path = board_path
        self._directory = directory
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)
        log.info(
            "supervising workers",
            extra={"workers": self.settings.workers, "port": port, "metrics_port": metrics_port},
        )
        try:
            for index in range(self.settings.workers):
                self._start(index)
            while not self._stopping.wait(0.2):
                self._restart_exited()
            return self._drain()
        finally:
            reserved.close()
            if not given:
                shutil.rmtree(directory, ignore_errors=True)

    def _live_pids(self) -> set[int]:
        return {p.pid for p in self._workers if p is not None and p.returncode is None}

    def _on_signal(self, signum: int, _frame: object) -> None:
        log.info("shutting down workers", extra={"signal": signal.Signals(signum).name})
        self._stopping.set()

    def _start(self, index: int) -> None:
        self.board.publish(index, WorkerState.STARTING)
        role = WorkerRole(index, self.settings.workers, self._board_path, os.getpid())
        self._started_at[index] = time.monotonic()
        self._workers[index] = subprocess.Popen(
            [sys.executable, "-m", self.name], env={**self._env, WORKER_ENV: role.environment()}
        )

    def _restart_exited(self) -> None:
        for index, process in enumerate(self._workers):
            if process is None or process.poll() is None:
                continue
            if time.monotonic() - self._started_at[index] < RESTART_DELAY_SECONDS:
                continue
            log.error(
                "worker exited: restarting it",
                extra={"worker": index, "pid": process.pid, "exit_code": process.returncode},
            )
            self._forget(process.pid)
            self._start(index)

    def _forget(self, pid: int) -> None:
        from prometheus_client.multiprocess import mark_process_dead

        mark_process_dead(pid, str(self._directory))

    def _drain(self) -> int:
        """SIGTERM to every worker at once, then wait for each to drain (grace + margin)."""
        for running in self._workers:
            if running is not None and running.poll() is None:
                running.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.settings.shutdown_grace_seconds + 10
        failed = 0
        for process in self._workers:
            if process is None:
                continue
            try:
                code = process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("worker did not drain in time: killing it", extra={"pid": process.pid})
                process.kill()
                code = process.wait()
            failed += code != 0
            self._forget(process.pid)
        log.info("stopped", extra={"workers_failed": failed})
        return 0 if failed == 0 else 1
