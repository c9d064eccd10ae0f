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
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from eventpipe.core.auth import AuthInterceptor, AuthSettings, TokenVerifier, current_tenant
from eventpipe.core.config import CommonSettings, ConfigError, ServiceSettings, load_settings
from eventpipe.core.interceptors import (
    ErrorMappingInterceptor,
    StreamingInterceptor,
    StreamLimitInterceptor,
    StreamLimits,
)
from eventpipe.core.logging import configure_logging
from eventpipe.core.metrics import start_metrics_server

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

    def _monitor_readiness(self) -> None:
        was_ready: bool | None = None
        was_alive = True
        while not self._stopped.is_set():
            dead = self.check_alive()
            if dead is not None and was_alive and not self._stopped.is_set():
                self.health.set(LIVENESS_SERVICE, health_pb2.HealthCheckResponse.NOT_SERVING)
                log.error("not alive: liveness NOT_SERVING", extra={"reason": dead})
                was_alive = False
            failure = self.check_ready()
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
) -> RunningServer:
    """Builds and starts the server (bound, health NOT_SERVING until checks pass)."""
    options = [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.so_reuseport", 0),
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
        settings.max_streams, settings.max_streams_per_tenant, settings.max_streams_per_connection
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
        start_metrics_server(settings.host, settings.metrics_port) if start_metrics else 0
    )
    server.start()
    running = RunningServer(
        server=server,
        port=port,
        metrics_port=metrics_port,
        definition=definition,
        settings=settings,
        health=health_servicer,
    )
    for worker in definition.workers:
        worker.start()
    running.start_readiness_monitor()
    log.info(
        "listening",
        extra={
            "port": port,
            "metrics_port": metrics_port,
            "services": list(definition.grpc_service_names),
        },
    )
    return running


def serve(definition: ServiceDefinition, settings: ServiceSettings) -> int:
    """Runs the service until SIGTERM or SIGINT, then shuts down gracefully; returns 0."""
    running = create_server(definition, settings)
    done = threading.Event()

    def _on_signal(signum: int, _frame: object) -> None:
        log.info("shutting down", extra={"signal": signal.Signals(signum).name})
        done.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    done.wait()
    running.stop()
    log.info("stopped")
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
    return serve(build(settings, common), settings)
