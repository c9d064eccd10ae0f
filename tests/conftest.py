"""Shared fixtures: real Kafka, the real Bigtable emulator and real Envoy, each started once per
test session on free ports under a temporary run folder, and stopped at the end.

A fixture that needs a component FAILS the test when the component cannot start: a missing
broker is a broken environment, never a reason to skip. Each test isolates itself with its own
topic prefix, table prefix and tenant (the ``isolation`` fixture). Tests are marked ``unit``,
``integration`` or ``e2e`` by the folder they live in.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from eventpipe.core.waiting import DeadlineExceeded
from eventpipe.stack import install
from eventpipe.stack.components import (
    SERVICE_NAMES,
    BigtableEmulator,
    Component,
    ComponentError,
    Envoy,
    GrpcService,
    KafkaBroker,
)
from eventpipe.stack.probes import free_port
from eventpipe.stack.stack import Stack, StackConfig

TESTS_DIR = Path(__file__).resolve().parent
TIERS = ("unit", "integration", "e2e")


def pytest_configure(config: pytest.Config) -> None:
    # The Bigtable client warns on every connection that it talks to an emulator: here it must.
    config.addinivalue_line(
        "filterwarnings", "ignore:Connecting to Bigtable emulator:RuntimeWarning"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        try:
            tier = Path(item.path).resolve().relative_to(TESTS_DIR).parts[0]
        except (ValueError, IndexError):
            continue
        if tier in TIERS:
            item.add_marker(getattr(pytest.mark, tier))


def start_or_fail(component: Component, timeout: float | None = None) -> None:
    """Starts a component, failing (never skipping) the requesting test if it cannot."""
    try:
        component.start(timeout)
    except (ComponentError, DeadlineExceeded, install.InstallError) as exc:
        component.stop()
        pytest.fail(f"could not start {component.name}: {exc}", pytrace=False)


def install_or_fail(*tools: str) -> None:
    try:
        install.install(tools, progress=lambda _message: None)
    except install.InstallError as exc:
        pytest.fail(f"could not install {', '.join(tools)}: {exc}", pytrace=False)


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Logs, data and pidfiles of this session's components (kept by pytest for post-mortems)."""
    return tmp_path_factory.mktemp("run")


@pytest.fixture(scope="session")
def kafka_broker(run_dir: Path) -> Iterator[KafkaBroker]:
    """A real single-node KRaft broker; ``stop()``/``start()`` keep its port and its topics."""
    install_or_fail("kafka")
    broker = KafkaBroker(run_dir, port=free_port(), controller_port=free_port())
    start_or_fail(broker)
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def bigtable_emulator(run_dir: Path) -> Iterator[BigtableEmulator]:
    """The real Bigtable emulator; ``BIGTABLE_EMULATOR_HOST`` points at it for the session.

    A restart (``stop()``/``start()``) keeps the port but loses every table.
    """
    install_or_fail("cbtemulator")
    emulator = BigtableEmulator(run_dir, port=free_port())
    start_or_fail(emulator)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("BIGTABLE_EMULATOR_HOST", emulator.emulator_host)
        yield emulator
    emulator.stop()


@pytest.fixture(scope="session")
def upstream_ports() -> dict[str, int]:
    """Ports the session's Envoy routes each service to; start services there to reach them."""
    return {name: free_port() for name in SERVICE_NAMES}


@pytest.fixture(scope="session")
def envoy_proxy(run_dir: Path, upstream_ports: dict[str, int]) -> Iterator[Envoy]:
    """Real Envoy with the repo's config, started only by the sessions that ask for it."""
    envoy = Envoy(run_dir, port=free_port(), admin_port=free_port(), upstream_ports=upstream_ports)
    start_or_fail(envoy)
    yield envoy
    envoy.stop()


@dataclass(frozen=True)
class Isolation:
    """Names no other test uses: Kafka topic prefix, Bigtable table prefix, tenant id."""

    token: str
    topic_prefix: str
    table_prefix: str
    tenant_id: str

    @classmethod
    def new(cls) -> Isolation:
        token = uuid.uuid4().hex[:10]
        return cls(token, f"t{token}.", f"t{token}_", f"tenant-{token}")


@pytest.fixture
def isolation() -> Isolation:
    return Isolation.new()


@pytest.fixture
def service_env(
    kafka_broker: KafkaBroker, bigtable_emulator: BigtableEmulator, isolation: Isolation
) -> dict[str, str]:
    """The environment a service process of this test runs with (its own prefixes)."""
    return {
        "EVENTPIPE_KAFKA_BOOTSTRAP_SERVERS": kafka_broker.bootstrap_servers,
        "EVENTPIPE_BIGTABLE_PROJECT": "eventpipe-local",
        "EVENTPIPE_BIGTABLE_INSTANCE": "eventpipe",
        "BIGTABLE_EMULATOR_HOST": bigtable_emulator.emulator_host,
        "EVENTPIPE_TOPIC_PREFIX": isolation.topic_prefix,
        "EVENTPIPE_TABLE_PREFIX": isolation.table_prefix,
    }


@pytest.fixture
def common_settings(service_env: dict[str, str]) -> Any:
    """``CommonSettings`` for this test's isolated names, with topics and tables created."""
    from eventpipe.core.config import CommonSettings, load_settings
    from eventpipe.core.topology import ensure_topology

    with pytest.MonkeyPatch.context() as patch:
        for key, value in service_env.items():
            patch.setenv(key, value)
        settings = load_settings(CommonSettings)
    ensure_topology(settings)
    return settings


StartService = Callable[..., GrpcService]


@pytest.fixture
def start_service(run_dir: Path, service_env: dict[str, str]) -> Iterator[StartService]:
    """Starts ``python -m <name>`` with this test's environment and waits for SERVING health.

    Call as ``start_service("ingest", port=..., env={...})``; every service started is stopped
    when the test ends. ``port`` defaults to a free one.
    """
    started: list[GrpcService] = []

    def start(
        name: str,
        *,
        port: int | None = None,
        env: dict[str, str] | None = None,
        timeout: float = 60.0,
    ) -> GrpcService:
        port = port or free_port()
        prefix = f"EVENTPIPE_{name.upper()}_"
        service_vars = {
            prefix + "HOST": "127.0.0.1",
            prefix + "PORT": str(port),
            prefix + "METRICS_PORT": str(free_port()),
        }
        service = GrpcService(
            name,
            run_dir / "services" / f"{name}-{port}-{uuid.uuid4().hex[:6]}",
            port,
            {**service_env, **service_vars, **(env or {})},
        )
        started.append(service)
        start_or_fail(service, timeout)
        return service

    yield start
    for service in reversed(started):
        service.stop()


def _started_stack(
    run_dir: Path, kafka: KafkaBroker, emulator: BigtableEmulator, **options: Any
) -> Iterator[Stack]:
    """The four services and Envoy started by ``eventpipe stack``'s own code, on free ports,
    in front of the session's Kafka and emulator, with names of their own."""
    names = Isolation.new()
    config = StackConfig(
        envoy_port=free_port(),
        envoy_admin_port=free_port(),
        kafka_port=kafka.port,
        kafka_controller_port=kafka.controller_port,
        emulator_port=emulator.port,
        service_ports={name: free_port() for name in SERVICE_NAMES},
        metrics_ports={name: free_port() for name in SERVICE_NAMES},
        topic_prefix=names.topic_prefix,
        table_prefix=names.table_prefix,
        **{"run_dir": run_dir, **options},
    )
    stack = Stack(config, progress=lambda _message: None)
    try:
        stack.up(only=[*SERVICE_NAMES, "envoy"], demo=False)
    except (ComponentError, DeadlineExceeded, install.InstallError) as exc:
        stack.down()
        pytest.fail(f"could not start the stack in {run_dir}: {exc}", pytrace=False)
    yield stack
    stack.down()


@pytest.fixture(scope="session")
def e2e_stack(
    run_dir: Path, kafka_broker: KafkaBroker, bigtable_emulator: BigtableEmulator
) -> Iterator[Stack]:
    """The whole stack without auth (see ``_started_stack``)."""
    yield from _started_stack(run_dir / "e2e", kafka_broker, bigtable_emulator)


# Edge tests: limits small enough that a bounded burst (loopback only) meets them.
EDGE_TENANT_BURST = 20
EDGE_MAX_REQUEST_BYTES = 64 * 1024


@pytest.fixture(scope="session")
def auth_stack(
    run_dir: Path, kafka_broker: KafkaBroker, bigtable_emulator: BigtableEmulator
) -> Iterator[Stack]:
    """Like ``e2e_stack`` but as ``eventpipe stack up`` runs by default: with JWT auth.

    Keys and JWKS are generated under its run folder's ``auth/``; Envoy runs jwt_authn on them
    and the services verify the forwarded token. A tenant may burst ``EDGE_TENANT_BURST``
    requests (refilled at 1/s) and a REST body may be ``EDGE_MAX_REQUEST_BYTES``: give each test
    its own tenant. Mint tokens with ``eventpipe.stack.stack.dev_token(stack.config, ...)``.
    """
    from eventpipe.stack.edge import EdgeSettings

    yield from _started_stack(
        run_dir / "auth-e2e",
        kafka_broker,
        bigtable_emulator,
        auth=True,
        edge=EdgeSettings(
            tenant_rate=1,
            tenant_burst=EDGE_TENANT_BURST,
            max_request_bytes=EDGE_MAX_REQUEST_BYTES,
        ),
    )
