"""The whole local stack: Kafka, the Bigtable emulator, the four services and Envoy.

``Stack.up`` installs what is missing, starts each component that is not already running
(found by pidfile and health, so running it twice restarts nothing), creates topics and tables,
loads demo data and prints the endpoints. ``Stack.down`` stops exactly what ``up`` started:
the processes named by the pidfiles under ``<run_dir>/pids``.

``up`` also writes its configuration to ``<run_dir>/stack.json``, so tools that work against the
running stack (``make bench``) find its ports without the variables ``up`` was started with:
``StackConfig.of_running_stack``.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import json
import os
import secrets
import shlex
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from eventpipe.core.auth import generate_local_keys, mint_token
from eventpipe.stack import install
from eventpipe.stack.components import (
    DESCRIPTOR_SET,
    REPO_ROOT,
    SERVICE_NAMES,
    BigtableEmulator,
    Component,
    ComponentError,
    Envoy,
    GrpcService,
    KafkaBroker,
    KafkaQuorum,
    SparkMaster,
    SparkWorker,
)
from eventpipe.stack.edge import EdgeAuth, EdgeSettings
from eventpipe.stack.process import ManagedProcess

DEFAULT_RUN_DIR = REPO_ROOT / ".run"
STACK_FILE = "stack.json"
"""Written by ``Stack.up`` into the run folder: the configuration the stack runs with."""
DEFAULT_SERVICE_PORTS = {"ingest": 50051, "store": 50052, "enrich": 50053, "query": 50054}
DEFAULT_METRICS_PORTS = {"ingest": 9101, "store": 9102, "enrich": 9103, "query": 9104}
PROFILES = ("default", "cluster")
"""``default``: one of everything, Spark in local mode. ``cluster``: three KRaft brokers, two
replicas of each service behind Envoy, a Spark standalone master and worker (docs/cluster.md)."""
CLUSTER_BROKERS = 3
CLUSTER_REPLICAS = 2
# Replica k (from 0) of a service serves on its port + 10 k, broker k on Kafka's ports + 2 k.
REPLICA_PORT_STEP = 10
BROKER_PORT_STEP = 2

Progress = Callable[[str], None]


def _flag(environ: Mapping[str, str], name: str, default: bool) -> bool:
    raw = environ.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in {"1", "true", "yes", "on"}:
        return True
    if raw in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"{name}={raw!r} is not a switch (1/0, true/false, on/off)")


def _port(environ: Mapping[str, str], name: str, default: int) -> int:
    raw = environ.get(name, "")
    if not raw:
        return default
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise ValueError(f"{name}={raw!r} is not a port number (1-65535)")
    return int(raw)


@dataclass(frozen=True)
class StackConfig:
    """Where the stack runs and on which ports; ``from_env`` reads the EVENTPIPE_* overrides."""

    run_dir: Path = DEFAULT_RUN_DIR
    envoy_port: int = 8080
    envoy_admin_port: int = 9901
    kafka_port: int = 9092
    kafka_controller_port: int = 9093
    emulator_port: int = 8086
    service_ports: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_SERVICE_PORTS))
    metrics_ports: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_METRICS_PORTS))
    bigtable_project: str = "eventpipe-local"
    bigtable_instance: str = "eventpipe"
    # None leaves the services' own defaults (from eventpipe.core.config) in force.
    topic_prefix: str | None = None
    table_prefix: str | None = None
    # JWT auth at the edge and in the services. Off when built directly (the test fixtures);
    # ``from_env`` (so ``eventpipe stack up``) turns it on unless EVENTPIPE_STACK_AUTH=0.
    auth: bool = False
    # Envoy's limits; None reads EVENTPIPE_EDGE_* when Envoy starts.
    edge: EdgeSettings | None = None
    # One of PROFILES; the cluster profile's ports follow, each list in replica order (empty:
    # derived from the ports above by REPLICA_PORT_STEP and BROKER_PORT_STEP).
    profile: str = "default"
    kafka_ports: Sequence[int] = ()
    kafka_controller_ports: Sequence[int] = ()
    replica_ports: Mapping[str, Sequence[int]] = field(default_factory=dict)
    replica_metrics_ports: Mapping[str, Sequence[int]] = field(default_factory=dict)
    spark_master_port: int = 7077
    spark_master_ui_port: int = 8090
    spark_worker_ui_port: int = 8091
    # Envoy terminates TLS (EVENTPIPE_EDGE_TLS=true for the edge's renderer).
    tls: bool = False

    def __post_init__(self) -> None:
        if self.profile not in PROFILES:
            raise ValueError(f"profile {self.profile!r} is not one of {', '.join(PROFILES)}")
        # Derived ports are filled in here, so a saved and reloaded config equals the original.
        set_field = object.__setattr__
        if not self.kafka_ports:
            count = CLUSTER_BROKERS if self.is_cluster else 1
            steps = [BROKER_PORT_STEP * k for k in range(count)]
            set_field(self, "kafka_ports", [self.kafka_port + step for step in steps])
            set_field(
                self,
                "kafka_controller_ports",
                [self.kafka_controller_port + step for step in steps],
            )
        set_field(self, "kafka_ports", tuple(self.kafka_ports))
        set_field(self, "kafka_controller_ports", tuple(self.kafka_controller_ports))
        if len(self.kafka_ports) != len(self.kafka_controller_ports):
            raise ValueError("kafka_ports and kafka_controller_ports differ in length")
        steps = [REPLICA_PORT_STEP * k for k in range(self.replicas)]
        for field_name, bases in (
            ("replica_ports", self.service_ports),
            ("replica_metrics_ports", self.metrics_ports),
        ):
            given: Mapping[str, Sequence[int]] = getattr(self, field_name)
            set_field(
                self,
                field_name,
                {
                    name: tuple(given.get(name) or [bases[name] + step for step in steps])
                    for name in SERVICE_NAMES
                },
            )

    @property
    def is_cluster(self) -> bool:
        return self.profile == "cluster"

    @property
    def replicas(self) -> int:
        """How many processes of each service the profile runs."""
        return CLUSTER_REPLICAS if self.is_cluster else 1

    def broker_ports(self) -> list[tuple[int, int]]:
        """Every broker's (client port, controller port), the first on ``kafka_port``."""
        return list(zip(self.kafka_ports, self.kafka_controller_ports, strict=True))

    def grpc_ports(self, name: str) -> list[int]:
        """The gRPC port of every replica of service ``name``, the first on its own port."""
        return list(self.replica_ports[name])

    def metrics_ports_of(self, name: str) -> list[int]:
        return list(self.replica_metrics_ports[name])

    @property
    def spark_master_url(self) -> str:
        return f"spark://127.0.0.1:{self.spark_master_port}"

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] = os.environ,
        run_dir: Path | None = None,
        *,
        profile: str = "default",
        tls: bool = False,
    ) -> StackConfig:
        return cls(
            profile=profile,
            tls=tls,
            spark_master_port=_port(environ, "EVENTPIPE_SPARK_MASTER_PORT", 7077),
            spark_master_ui_port=_port(environ, "EVENTPIPE_SPARK_MASTER_UI_PORT", 8090),
            spark_worker_ui_port=_port(environ, "EVENTPIPE_SPARK_WORKER_UI_PORT", 8091),
            run_dir=run_dir or Path(environ.get("EVENTPIPE_RUN_DIR") or DEFAULT_RUN_DIR),
            envoy_port=_port(environ, "EVENTPIPE_ENVOY_PORT", 8080),
            envoy_admin_port=_port(environ, "EVENTPIPE_ENVOY_ADMIN_PORT", 9901),
            kafka_port=_port(environ, "EVENTPIPE_KAFKA_PORT", 9092),
            kafka_controller_port=_port(environ, "EVENTPIPE_KAFKA_CONTROLLER_PORT", 9093),
            emulator_port=_port(environ, "EVENTPIPE_BIGTABLE_EMULATOR_PORT", 8086),
            service_ports={
                name: _port(environ, f"EVENTPIPE_{name.upper()}_PORT", port)
                for name, port in DEFAULT_SERVICE_PORTS.items()
            },
            metrics_ports={
                name: _port(environ, f"EVENTPIPE_{name.upper()}_METRICS_PORT", port)
                for name, port in DEFAULT_METRICS_PORTS.items()
            },
            bigtable_project=environ.get("EVENTPIPE_BIGTABLE_PROJECT") or "eventpipe-local",
            bigtable_instance=environ.get("EVENTPIPE_BIGTABLE_INSTANCE") or "eventpipe",
            topic_prefix=environ.get("EVENTPIPE_TOPIC_PREFIX"),
            table_prefix=environ.get("EVENTPIPE_TABLE_PREFIX"),
            auth=_flag(environ, "EVENTPIPE_STACK_AUTH", True),
        )

    @classmethod
    def of_running_stack(
        cls, environ: Mapping[str, str] = os.environ, run_dir: Path | None = None
    ) -> StackConfig:
        """The configuration ``eventpipe stack up`` saved in the run folder (``run_dir``, else
        ``EVENTPIPE_RUN_DIR`` or ``.run``), profile included; ``from_env`` when nothing was
        saved there (a stack never started)."""
        run_dir = run_dir or Path(environ.get("EVENTPIPE_RUN_DIR") or DEFAULT_RUN_DIR)
        saved = run_dir / STACK_FILE
        if not saved.exists():
            return cls.from_env(environ, run_dir=run_dir)
        try:
            data = json.loads(saved.read_text())
        except ValueError as exc:
            raise ValueError(f"{saved} is not valid JSON ({exc}); `make up` rewrites it") from None
        return cls.from_saved(data, run_dir=run_dir)

    @classmethod
    def from_saved(cls, data: Mapping[str, object], run_dir: Path) -> StackConfig:
        """The inverse of ``saved_form``; keys this version does not know are ignored."""
        known = {f for f in cls.__dataclass_fields__ if f not in {"run_dir", "edge"}}
        values = {key: value for key, value in data.items() if key in known}
        return cls(run_dir=run_dir, **values)  # type: ignore[arg-type]

    def saved_form(self) -> dict[str, object]:
        """What ``save`` writes: every setting but Envoy's limits (read again at each start)."""
        return {
            "envoy_port": self.envoy_port,
            "envoy_admin_port": self.envoy_admin_port,
            "kafka_port": self.kafka_port,
            "kafka_controller_port": self.kafka_controller_port,
            "emulator_port": self.emulator_port,
            "service_ports": dict(self.service_ports),
            "metrics_ports": dict(self.metrics_ports),
            "bigtable_project": self.bigtable_project,
            "bigtable_instance": self.bigtable_instance,
            "topic_prefix": self.topic_prefix,
            "table_prefix": self.table_prefix,
            "auth": self.auth,
            "profile": self.profile,
            "kafka_ports": [port for port, _ in self.broker_ports()],
            "kafka_controller_ports": [port for _, port in self.broker_ports()],
            "replica_ports": {name: self.grpc_ports(name) for name in SERVICE_NAMES},
            "replica_metrics_ports": {name: self.metrics_ports_of(name) for name in SERVICE_NAMES},
            "spark_master_port": self.spark_master_port,
            "spark_master_ui_port": self.spark_master_ui_port,
            "spark_worker_ui_port": self.spark_worker_ui_port,
            "tls": self.tls,
        }

    def save(self) -> Path:
        """Writes ``<run_dir>/stack.json`` (atomically: a reader never sees half a file)."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        path = self.run_dir / STACK_FILE
        partial = path.with_suffix(".json.partial")
        partial.write_text(json.dumps(self.saved_form(), indent=2) + "\n")
        partial.replace(path)
        return path

    @property
    def auth_dir(self) -> Path:
        """The local signing key and JWKS (generated at ``up``, never committed)."""
        return self.run_dir / "auth"

    @property
    def edge_auth(self) -> EdgeAuth | None:
        """What Envoy checks, or None when the stack runs without auth."""
        return EdgeAuth(jwks_file=self.auth_dir / "jwks.json") if self.auth else None

    def auth_env(self) -> dict[str, str]:
        """The services verify the same tokens as Envoy: same JWKS, issuer and audience."""
        auth = self.edge_auth
        if auth is None:
            return {}
        return {
            "EVENTPIPE_AUTH_JWKS_FILE": str(auth.jwks_file),
            "EVENTPIPE_AUTH_ISSUER": auth.issuer,
            "EVENTPIPE_AUTH_AUDIENCE": auth.audience,
            "EVENTPIPE_AUTH_LEEWAY_SECONDS": str(auth.leeway_seconds),
        }

    @property
    def kafka_bootstrap_servers(self) -> str:
        return ",".join(f"127.0.0.1:{port}" for port, _ in self.broker_ports())

    @property
    def emulator_host(self) -> str:
        return f"127.0.0.1:{self.emulator_port}"

    def service_env(self) -> dict[str, str]:
        """The environment every service (and the topology/demo steps) runs with."""
        env = {
            "EVENTPIPE_KAFKA_BOOTSTRAP_SERVERS": self.kafka_bootstrap_servers,
            "EVENTPIPE_BIGTABLE_PROJECT": self.bigtable_project,
            "EVENTPIPE_BIGTABLE_INSTANCE": self.bigtable_instance,
            "BIGTABLE_EMULATOR_HOST": self.emulator_host,
            "EVENTPIPE_ENVOY_PORT": str(self.envoy_port),
        }
        if self.topic_prefix is not None:
            env["EVENTPIPE_TOPIC_PREFIX"] = self.topic_prefix
        if self.table_prefix is not None:
            env["EVENTPIPE_TABLE_PREFIX"] = self.table_prefix
        for name in SERVICE_NAMES:
            prefix = f"EVENTPIPE_{name.upper()}_"
            # Loopback only: a laptop's stack is nobody else's business.
            env[prefix + "HOST"] = "127.0.0.1"
            env[prefix + "PORT"] = str(self.service_ports[name])
            env[prefix + "METRICS_PORT"] = str(self.metrics_ports[name])
        if self.is_cluster:
            env.update(self.cluster_env())
        return env

    @property
    def edge_url(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.envoy_port}"

    def edge_env(self) -> dict[str, str]:
        """What ``--tls`` tells the edge's renderer: terminate TLS (self-signed locally)."""
        return {"EVENTPIPE_EDGE_TLS": "true"} if self.tls else {}

    def cluster_env(self) -> dict[str, str]:
        """What the cluster profile adds: replicated topics, and enrich on the standalone
        master, each application with one core of the worker's two (so both replicas get
        executors) and small heaps; executors write to the same emulator."""
        spark_conf = {
            "spark.cores.max": "1",
            "spark.executor.cores": "1",
            "spark.executor.memory": "512m",
            "spark.driver.memory": "512m",
            "spark.driver.host": "127.0.0.1",
            "spark.driver.bindAddress": "127.0.0.1",
            "spark.executorEnv.BIGTABLE_EMULATOR_HOST": self.emulator_host,
        }
        return {
            "EVENTPIPE_TOPIC_REPLICATION_FACTOR": str(min(3, len(self.broker_ports()))),
            "EVENTPIPE_TOPIC_MIN_INSYNC_REPLICAS": str(min(2, len(self.broker_ports()))),
            "EVENTPIPE_ENRICH_SPARK_MASTER": self.spark_master_url,
            # A replica's dead claim on a scheduled window is taken over within a lease plus a
            # rescan: 40 s here rather than the services' 150 s, so it shows on a laptop.
            "EVENTPIPE_ENRICH_SCHEDULER_CLAIM_LEASE_SECONDS": "30",
            "EVENTPIPE_ENRICH_SCHEDULER_RESCAN_SECONDS": "10",
            "EVENTPIPE_ENRICH_SPARK_CONF": ";".join(f"{k}={v}" for k, v in spark_conf.items()),
        }

    def replica_env(self, name: str, index: int) -> dict[str, str]:
        """Replica ``index`` (from 0) of service ``name``: its own ports."""
        prefix = f"EVENTPIPE_{name.upper()}_"
        return {
            prefix + "PORT": str(self.grpc_ports(name)[index]),
            prefix + "METRICS_PORT": str(self.metrics_ports_of(name)[index]),
        }


@contextlib.contextmanager
def patched_environ(values: Mapping[str, str]) -> Iterator[None]:
    """Sets environment variables for in-process steps (topology, demo), then restores them."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


@dataclass(frozen=True)
class ComponentStatus:
    name: str
    pid: int | None
    port: int
    health: str


class Stack:
    """Starts, inspects and stops the components of one run folder."""

    def __init__(self, config: StackConfig, progress: Progress = print) -> None:
        self.config = config
        self.progress = progress
        run_dir = config.run_dir
        cluster = config.is_cluster
        broker_ports = config.broker_ports()
        quorum = (
            KafkaQuorum(
                tuple((k + 1, controller) for k, (_, controller) in enumerate(broker_ports)),
                run_dir / "data" / "kafka-cluster-id",
            )
            if len(broker_ports) > 1
            else None
        )
        self.brokers = [
            KafkaBroker(
                run_dir,
                port,
                controller,
                name=f"kafka-{k + 1}" if quorum else "kafka",
                node_id=k + 1,
                quorum=quorum,
                # Three JVMs share two cores with everything else: small heaps.
                max_heap="256m" if quorum else "768m",
            )
            for k, (port, controller) in enumerate(broker_ports)
        ]
        self.kafka = self.brokers[0]
        self.bigtable = BigtableEmulator(run_dir, config.emulator_port)
        env = {**config.service_env(), **config.auth_env()}
        if cluster:
            env.update(self._cluster_secrets())
        self.replicas = {
            name: [
                GrpcService(
                    f"{name}-{k + 1}" if cluster else name,
                    run_dir,
                    config.grpc_ports(name)[k],
                    {**env, **config.replica_env(name, k)},
                    module=name,
                )
                for k in range(config.replicas)
            ]
            for name in SERVICE_NAMES
        }
        # The first replica of each service (the only one in the default profile).
        self.services = {name: replicas[0] for name, replicas in self.replicas.items()}
        self.spark: list[Component] = []
        if cluster:
            spark_env = {"BIGTABLE_EMULATOR_HOST": config.emulator_host}
            auth_secret = env["EVENTPIPE_ENRICH_SPARK_AUTH_SECRET"]
            master = SparkMaster(
                run_dir,
                config.spark_master_port,
                config.spark_master_ui_port,
                spark_env,
                auth_secret=auth_secret,
            )
            # The worker's own RPC port is of no interest: 0 lets Spark pick one.
            worker = SparkWorker(
                run_dir,
                master,
                0,
                config.spark_worker_ui_port,
                spark_env,
                auth_secret=auth_secret,
            )
            self.spark = [master, worker]
        self.envoy = Envoy(
            run_dir,
            config.envoy_port,
            config.envoy_admin_port,
            {name: config.grpc_ports(name)[0] for name in SERVICE_NAMES},
            auth=config.edge_auth,
            edge_settings=config.edge,
            replica_ports={name: config.grpc_ports(name) for name in SERVICE_NAMES}
            if cluster
            else None,
        )
        for component in self.components():
            component.detach = True

    def _shared_secret(self, name: str) -> str:
        """A secret every replica shares, drawn once per run folder and kept (mode 0600)
        beside the signing key in ``<run_dir>/auth/``, never committed."""
        path = self.config.auth_dir / name
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_suffix(".partial")
            partial.touch(mode=0o600)
            partial.write_text(secrets.token_urlsafe(32))
            partial.replace(path)
        return path.read_text().strip()

    def _cluster_secrets(self) -> dict[str, str]:
        """One page-token secret for every replica (a token one replica signs, another reads)
        and the spark.authenticate secret of enrich's drivers and the standalone daemons."""
        page_tokens = self._shared_secret("page-token-secret")
        return {
            **{
                f"EVENTPIPE_{name.upper()}_PAGE_TOKEN_SECRET": page_tokens
                for name in ("store", "enrich", "query")
            },
            "EVENTPIPE_ENRICH_SPARK_AUTH_SECRET": self._shared_secret("spark-auth-secret"),
        }

    def components(self) -> list[Component]:
        """Every component, in start order."""
        services = [replica for replicas in self.replicas.values() for replica in replicas]
        return [*self.brokers, self.bigtable, *self.spark, *services, self.envoy]

    def _start(self, component: Component, timeout: float | None) -> None:
        self.progress(f"{component.name}: starting on 127.0.0.1:{component.port} ...")
        started_at = time.monotonic()
        if component.start(timeout):
            took = time.monotonic() - started_at
            self.progress(f"{component.name}: ready in {took:.1f}s (pid {component.pid})")
        else:
            self.progress(f"{component.name}: already running (pid {component.pid})")

    def up(
        self,
        *,
        only: Iterable[str] | None = None,
        demo: bool = True,
        timeout: float | None = None,
    ) -> None:
        """Starts the components named in ``only`` (default: all) that are not running.

        Components left out of ``only`` are assumed to be running already (tests pass a
        session's Kafka and emulator ports in the config and start only services and Envoy).
        """
        wanted = (
            set(only)
            if only is not None
            else {"kafka", "bigtable", "spark", "envoy", *SERVICE_NAMES}
        )
        self.check_profile()
        self.config.save()
        needed = [tool for tool in install.STACK_TOOLS if tool != "envoy"]
        install.install(needed, progress=self.progress)
        if not DESCRIPTOR_SET.exists():
            self.progress("generating stubs and the Envoy descriptor set (make protos) ...")
            importlib.import_module("eventpipe.codegen").generate()
        if self.config.auth:
            generate_local_keys(self.config.auth_dir)
            self.progress(f"auth: signing key and JWKS in {self.config.auth_dir}")

        if "kafka" in wanted:
            self._start_together(self.brokers, timeout)
        if "bigtable" in wanted:
            self._start(self.bigtable, timeout)
        if wanted & {"kafka", "bigtable", *SERVICE_NAMES}:
            self._ensure_topology()
        if "spark" in wanted:
            self._start_together(self.spark, timeout)
        for name, replicas in self.replicas.items():
            if name not in wanted:
                continue
            if not GrpcService.is_written(name):
                self.progress(f"{name}: skipped, services/{name}/__main__.py does not exist yet")
                continue
            self._start_together(replicas, timeout)
        if self.envoy.name in wanted:
            # The edge's renderer reads its settings (TLS among them) from the environment.
            with patched_environ(self.config.edge_env()):
                self._start(self.envoy, timeout)
        if demo:
            self._load_demo_data()

    def _start_together(self, components: Sequence[Component], timeout: float | None) -> None:
        """Launches every component, then waits for each: a KRaft quorum elects no leader until
        most of its voters run, and replicas start faster side by side."""
        if len(components) == 1:
            self._start(components[0], timeout)
            return
        started_at = time.monotonic()
        launched = []
        for component in components:
            self.progress(f"{component.name}: starting on 127.0.0.1:{component.port} ...")
            launched.append(component.launch())
        for component, was_started in zip(components, launched, strict=True):
            component.wait_healthy(component.startup_timeout if timeout is None else timeout)
            if was_started:
                took = time.monotonic() - started_at
                self.progress(f"{component.name}: ready in {took:.1f}s (pid {component.pid})")
            else:
                self.progress(f"{component.name}: already running (pid {component.pid})")

    def check_profile(self) -> None:
        """Refuses to start one profile over another that still runs in the same run folder
        (their components would fight over ports): the saved one must be stopped first."""
        saved = self.config.run_dir / STACK_FILE
        if not saved.exists():
            return
        try:
            running = StackConfig.of_running_stack(run_dir=self.config.run_dir)
        except ValueError:
            return
        if running.profile == self.config.profile:
            return
        alive = [c.name for c in Stack(running, progress=self.progress).components() if c.pid]
        if alive:
            raise ComponentError(
                f"the {running.profile} profile still runs in {self.config.run_dir} "
                f"({', '.join(alive)}): stop it first (`make down` or `eventpipe stack down`)"
            )

    def _ensure_topology(self) -> None:
        try:
            topology = importlib.import_module("eventpipe.core.topology")
            ensure_topology = topology.ensure_topology
        except (ImportError, AttributeError):
            self.progress(
                "topics and tables: skipped, eventpipe.core.topology.ensure_topology "
                "is not written yet"
            )
            return
        config_module = importlib.import_module("eventpipe.core.config")
        self.progress("topics and tables: creating the missing ones ...")
        with patched_environ(self.config.service_env()), warnings.catch_warnings():
            # The client warns that it talks to an emulator: here that is the point.
            warnings.filterwarnings("ignore", "Connecting to Bigtable emulator")
            ensure_topology(config_module.load_settings(config_module.CommonSettings))
        self.progress("topics and tables: ready")

    def _load_demo_data(self) -> None:
        try:
            demo = importlib.import_module("eventpipe.stack.demo")
        except ModuleNotFoundError as exc:
            if exc.name != "eventpipe.stack.demo":
                raise
            return  # no demo data written yet: nothing to load
        load = getattr(demo, "load_demo_data", None)
        if load is None:
            return
        self.progress("demo data: loading ...")
        with patched_environ(self.config.service_env()):
            takes_config = bool(inspect.signature(load).parameters)
            load(self.config) if takes_config else load()
        self.progress("demo data: loaded")

    def down(self, timeout: float = 20.0) -> list[str]:
        """Stops every component this run folder's pidfiles name; returns the names stopped.

        The profile's components go first, in reverse start order; then any other pidfile of
        the run folder (a profile started before this one's configuration was saved): each is
        signalled only while its process still has the command line the pidfile recorded.
        """
        stopped = []
        for component in reversed(self.components()):
            if component.stop(timeout):
                self.progress(f"{component.name}: stopped")
                stopped.append(component.name)
        for pidfile in sorted((self.config.run_dir / "pids").glob("*.json")):
            name = pidfile.stem
            process = ManagedProcess(name, pidfile.parent, self.config.run_dir / "logs" / name)
            if process.stop(timeout):
                self.progress(f"{name}: stopped")
                stopped.append(name)
        return stopped

    def status(self) -> list[ComponentStatus]:
        rows = []
        for component in self.components():
            pid = component.pid
            if pid is None:
                health = "stopped"
            elif isinstance(component, GrpcService):
                health = component.safe_health()
            else:
                health = "ready" if component.safe_is_healthy() else "not ready"
            rows.append(ComponentStatus(component.name, pid, component.port, health))
        return rows

    def endpoints(self) -> str:
        """What a developer needs to talk to the running stack."""
        c = self.config
        envoy = c.edge_url
        lines = [
            f"Profile                  {c.profile}",
            f"REST and gRPC via Envoy  {envoy}  (admin http://127.0.0.1:{c.envoy_admin_port})",
            f"Kafka                    {c.kafka_bootstrap_servers}",
            f"Bigtable emulator        {c.emulator_host}  "
            f"(export BIGTABLE_EMULATOR_HOST={c.emulator_host})",
        ]
        if c.is_cluster:
            lines.append(
                f"Spark master             {c.spark_master_url}  "
                f"(UI http://127.0.0.1:{c.spark_master_ui_port})"
            )
        for name in SERVICE_NAMES:
            for port, metrics in zip(c.grpc_ports(name), c.metrics_ports_of(name), strict=True):
                lines.append(
                    f"{name:<8} gRPC 127.0.0.1:{port:<6} metrics http://127.0.0.1:{metrics}/metrics"
                )
        grpcurl = "grpcurl"
        with contextlib.suppress(install.InstallError):
            grpcurl = str(install.tool_path("grpcurl"))
        ingest = f"127.0.0.1:{c.service_ports['ingest']}"
        if c.auth:
            lines += ["", *self._auth_help()]
        lines += [
            "",
            TRY_HEADER,
            *(f"  {command}" for command in self.try_commands()),
            "They ingest one event for user-00001 (the answer is the acknowledgement: Kafka has",
            "it), read it back as stored in Bigtable (the store writes it within about a second;",
            "run that line again if it is not there yet), then read user-00001's profile, which",
            "enrichment built from the demo data at `make up` (new events join it when",
            "enrichment runs again: `eventpipe enrich run`, see the README).",
            "",
            "Health and reflection (no token needed):",
            f"  {grpcurl} -plaintext {ingest} list",
            f"  {grpcurl} -plaintext {ingest} grpc.health.v1.Health/Check",
            f"  curl -s{'k' if c.tls else ''} {envoy}/healthz",
            f"Logs: {c.run_dir / 'logs'} (Envoy access log: envoy-access.log)    "
            "Stop: eventpipe stack down",
        ]
        return "\n".join(lines)

    def try_commands(self, tenant: str = "demo", entity: str = "user-00001") -> list[str]:
        """Shell lines that take one event through the whole path, to paste as they are:
        ingest it through Envoy, read it back raw, then read the entity's profile."""
        c = self.config
        base = f"{c.edge_url}/v1/tenants/{tenant}"
        # With auth on, each curl carries the token the first line mints.
        bearer = ' -H "Authorization: Bearer $TOKEN"' if c.auth else ""
        commands = []
        if c.auth:
            keys = (
                ""
                if c.auth_dir == DEFAULT_RUN_DIR / "auth"
                else f" --keys-dir {shlex.quote(str(c.auth_dir))}"
            )
            commands.append(
                f"export TOKEN=$({shlex.quote(str(_eventpipe_command()))} auth token "
                f"--tenant {tenant} --scope ingest,query{keys})"
            )
        # A new id each time (event ids are the caller's: the same id at another time would be
        # a second event), and an event_time, which every event needs. Double quotes, so the
        # shell fills in $EVENT_TIME.
        body = json.dumps(
            {
                "event_id": "try-$EVENT_TIME",
                "event_type": "page_view",
                "entity_id": entity,
                "event_time": "$EVENT_TIME",
            },
            separators=(",", ":"),
        )
        event = body.replace('"', '\\"')
        # --tls: the local certificate is self-signed, so curl is told not to verify it.
        curl = "curl -sSk" if c.tls else "curl -sS"
        commands += [
            "export EVENT_TIME=$(date -u +%Y-%m-%dT%H:%M:%SZ)",
            f"{curl} -X POST {base}/events{bearer} -H 'content-type: application/json' "
            f'-d "{event}"',
            f"{curl}{bearer} '{base}/entities/{entity}/events?view=EVENT_VIEW_RAW&page_size=3'",
            f"{curl}{bearer} {base}/entities/{entity}",
        ]
        return commands

    def _auth_help(self) -> list[str]:
        return [
            "Auth is on: every API call, through Envoy or straight to a service, needs a JWT",
            "(health and reflection stay open; EVENTPIPE_STACK_AUTH=0 starts the stack without).",
            "The first line below mints one for the demo tenant. Scopes: ingest, query, admin",
            "(store, enrich), operator (GetConsumerStatus, no tenant); the token's tenant must be",
            "the request's.",
        ]


TRY_HEADER = "Try the whole path, ingest -> Bigtable -> query (paste the lines as they are):"


def _eventpipe_command() -> Path | str:
    """The ``eventpipe`` next to this interpreter (the venv's), so the line works without
    activating the venv; the bare name when it is not there."""
    beside = Path(sys.executable).parent / "eventpipe"
    return beside if beside.exists() else "eventpipe"


def dev_token(
    config: StackConfig, tenant: str | None, scopes: Iterable[str], ttl_seconds: int = 3600
) -> str | None:
    """A token the running stack accepts for ``tenant`` and ``scopes``; None when auth is off.
    ``tenant`` None (with the operator scope) is an operator's token, for cross-tenant RPCs.

    For in-process steps such as the demo loader: send it as ``authorization: Bearer <token>``.
    """
    if not config.auth:
        return None
    private_path, jwks_path = generate_local_keys(config.auth_dir)
    auth = config.edge_auth
    assert auth is not None
    return mint_token(
        private_path.read_bytes(),
        jwks_path,
        tenant_id=tenant,
        scopes=list(scopes),
        issuer=auth.issuer,
        audience=auth.audience,
        ttl_seconds=ttl_seconds,
    )
