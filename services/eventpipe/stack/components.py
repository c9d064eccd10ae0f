"""The real local components, one small class each: Kafka, the Bigtable emulator, Envoy, and
the EventPipe gRPC services, each started as a process under a run folder.

Every component keeps its log in ``<run_dir>/logs/<name>.log``, its data in
``<run_dir>/data/<name>`` and its pidfile in ``<run_dir>/pids``; ``start`` waits until the
component answers a real request, ``stop`` sends SIGTERM then SIGKILL, and a stopped component
starts again on the same port (tests stop Kafka or the emulator to exercise failure handling).
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import urllib.request
import uuid
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from eventpipe.core.config import ConfigError, load_settings
from eventpipe.core.waiting import DeadlineExceeded, wait_until
from eventpipe.stack import edge, install, probes
from eventpipe.stack.edge import ENVOY_TEMPLATE, EdgeAuth, EdgeSettings
from eventpipe.stack.process import ManagedProcess

REPO_ROOT = Path(__file__).resolve().parents[3]
DESCRIPTOR_SET = REPO_ROOT / ".build" / "descriptors" / "eventpipe.pb"
SERVICE_NAMES = ("ingest", "store", "enrich", "query")
GRPC_SERVICES = {
    "ingest": "eventpipe.ingest.v1.IngestService",
    "store": "eventpipe.store.v1.StoreService",
    "enrich": "eventpipe.enrich.v1.EnrichService",
    "query": "eventpipe.query.v1.QueryService",
}
HOST = "127.0.0.1"


class ComponentError(RuntimeError):
    """A component could not start; the message carries the reason and its log tail."""


class Component(ABC):
    """A process that serves on ``port`` once ``is_healthy`` says so."""

    startup_timeout: float = 60.0

    def __init__(self, name: str, run_dir: Path, port: int) -> None:
        # True: the process outlives this Python process (``eventpipe stack up``).
        self.detach = False
        self.name = name
        self.run_dir = run_dir
        self.port = port
        self.process = ManagedProcess(name, run_dir / "pids", run_dir / "logs" / f"{name}.log")

    @property
    def data_dir(self) -> Path:
        return self.run_dir / "data" / self.name

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid

    @abstractmethod
    def argv(self) -> list[str]:
        """The command line that starts the component."""

    @abstractmethod
    def is_healthy(self) -> bool:
        """One real request: True when the component serves."""

    def env(self) -> dict[str, str]:
        return dict(os.environ)

    @property
    def cwd(self) -> Path:
        return self.data_dir

    def prepare(self) -> None:  # noqa: B027 - optional hook, most components need nothing
        """Writes config files and formats storage before the first start."""

    def safe_is_healthy(self) -> bool:
        try:
            return self.is_healthy()
        except Exception:
            return False

    def start(self, timeout: float | None = None) -> bool:
        """Starts and waits until healthy; returns False when it was already running."""
        started = self.launch()
        self.wait_healthy(self.startup_timeout if timeout is None else timeout)
        return started

    def launch(self) -> bool:
        """Starts the process without waiting for it to serve (members of a quorum start
        together, then are waited for); returns False when it was already running."""
        if self.process.is_running():
            return False
        if probes.tcp_open(HOST, self.port):
            raise ComponentError(
                f"cannot start {self.name}: port {self.port} is already taken by a process this "
                f"run folder did not start ({self.run_dir}); stop it or choose another port"
            )
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.prepare()
        self.process.start(self.argv(), self.env(), cwd=self.cwd, detach=self.detach)
        return True

    def kill(self) -> None:
        """SIGKILL, no grace (fault tests): what a crashed machine or the OOM killer does."""
        self.process.kill()

    def wait_healthy(self, timeout: float) -> None:
        try:
            wait_until(
                self.is_healthy,
                timeout=timeout,
                what=f"{self.name} on port {self.port}",
                abort=self.process.exit_reason,
            )
        except DeadlineExceeded as exc:
            raise ComponentError(f"{exc}\n{self.process.log_tail()}") from None

    def stop(self, timeout: float = 20.0) -> bool:
        """Stops the process; returns False when it was not running."""
        return self.process.stop(timeout)

    def restart(self, timeout: float | None = None) -> None:
        self.stop()
        self.start(timeout)


@dataclass(frozen=True)
class KafkaQuorum:
    """The KRaft quorum a broker belongs to when there is more than one: every member's
    (node id, controller port), and where the cluster id all of them format with is kept."""

    voters: tuple[tuple[int, int], ...]
    cluster_id_file: Path

    @property
    def size(self) -> int:
        return len(self.voters)

    def voters_setting(self) -> str:
        return ",".join(f"{node}@{HOST}:{port}" for node, port in self.voters)

    def cluster_id(self) -> str:
        """One id for every member, drawn once and kept, so a member formatted later joins."""
        if not self.cluster_id_file.exists():
            self.cluster_id_file.parent.mkdir(parents=True, exist_ok=True)
            partial = self.cluster_id_file.with_suffix(".partial")
            partial.write_text(_new_cluster_id())
            partial.replace(self.cluster_id_file)
        return self.cluster_id_file.read_text().strip()


class KafkaBroker(Component):
    """A KRaft broker (broker and controller in one JVM): a single node by default, or one
    voter of ``quorum``, whose internal topics then keep three replicas (two in sync)."""

    startup_timeout = 120.0

    def __init__(
        self,
        run_dir: Path,
        port: int,
        controller_port: int,
        name: str = "kafka",
        *,
        node_id: int = 1,
        quorum: KafkaQuorum | None = None,
        max_heap: str = "768m",
    ) -> None:
        super().__init__(name, run_dir, port)
        self.controller_port = controller_port
        self.node_id = node_id
        self.quorum = quorum
        self.max_heap = max_heap

    @property
    def bootstrap_servers(self) -> str:
        return self.address

    @property
    def config_path(self) -> Path:
        return self.data_dir / "server.properties"

    def _server_properties(self) -> str:
        quorum: dict[str, str] = {
            "controller.quorum.bootstrap.servers": f"{HOST}:{self.controller_port}"
        }
        replicas, min_isr = "1", "1"
        if self.quorum is not None:
            quorum = {
                "controller.quorum.voters": self.quorum.voters_setting(),
                # The log cleaner's dedupe buffer (128 MiB by default) alone took half of a
                # 256 MiB heap: a broker died of OutOfMemoryError at start. 16 MiB is plenty
                # for the few compacted topics of a local cluster.
                "log.cleaner.dedupe.buffer.size": str(16 * 1024 * 1024),
            }
            replicas = str(min(3, self.quorum.size))
            min_isr = str(min(2, self.quorum.size))
        settings = {
            "process.roles": "broker,controller",
            "node.id": str(self.node_id),
            **quorum,
            "listeners": f"PLAINTEXT://{HOST}:{self.port},CONTROLLER://{HOST}:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://{HOST}:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(self.data_dir / "log"),
            "num.partitions": "1",
            # One node: every internal topic must make do with one replica. A quorum keeps
            # consumer offsets on three, so a group outlives the loss of one broker.
            "offsets.topic.replication.factor": replicas,
            "transaction.state.log.replication.factor": replicas,
            "transaction.state.log.min.isr": min_isr,
            "share.coordinator.state.topic.replication.factor": replicas,
            "share.coordinator.state.topic.min.isr": min_isr,
            # Consumers in tests join alone; waiting 3 s for more members only slows them.
            "group.initial.rebalance.delay.ms": "0",
            # Topics are created by ensure_topology, with their settings, never by accident.
            "auto.create.topics.enable": "false",
            "log.retention.check.interval.ms": "60000",
        }
        return "".join(f"{key}={value}\n" for key, value in settings.items())

    def _log4j_config(self) -> str:
        return (
            "Configuration:\n"
            "  Appenders:\n"
            "    Console:\n"
            "      name: STDOUT\n"
            "      PatternLayout:\n"
            '        pattern: "[%d] %p %m (%c)%n"\n'
            "  Loggers:\n"
            "    Root:\n"
            "      level: INFO\n"
            "      AppenderRef:\n"
            "        - ref: STDOUT\n"
            "    Logger:\n"
            "      - name: org.apache.kafka.clients\n"
            "        level: WARN\n"
        )

    def _java(self, main_class: str, *args: str) -> list[str]:
        libs = install.tool_path("kafka")
        return [
            "java",
            "-Xms128m" if self.quorum else "-Xms256m",
            f"-Xmx{self.max_heap}",
            "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.data_dir / 'log4j2.yaml'}",
            "-cp",
            f"{libs}/*",
            main_class,
            *args,
        ]

    def prepare(self) -> None:
        self.config_path.write_text(self._server_properties())
        (self.data_dir / "log4j2.yaml").write_text(self._log4j_config())
        if (self.data_dir / "log" / "meta.properties").exists():
            return  # formatted before: a restart keeps topics and offsets
        if self.quorum is None:
            cluster_id, voters = _new_cluster_id(), ["--standalone"]
        else:
            # Static voters (controller.quorum.voters): the format takes no voter option.
            cluster_id, voters = self.quorum.cluster_id(), []
        argv = self._java(
            "kafka.tools.StorageTool",
            "format",
            *voters,
            "-t",
            cluster_id,
            "-c",
            str(self.config_path),
        )
        result = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
        if result.returncode != 0:
            raise ComponentError(
                f"formatting Kafka storage failed:\n{result.stdout}{result.stderr}"
            )

    def argv(self) -> list[str]:
        return self._java("kafka.Kafka", str(self.config_path))

    def is_healthy(self) -> bool:
        # A quorum member serves once every voter is back in the cluster's metadata: topics of
        # replication factor 3 can be created and written with their full set of replicas.
        brokers = self.quorum.size if self.quorum else 1
        return probes.kafka_ready(self.bootstrap_servers, min_brokers=brokers)


class BigtableEmulator(Component):
    """Google's in-memory Bigtable emulator: a restart loses every table."""

    def __init__(self, run_dir: Path, port: int, name: str = "bigtable") -> None:
        super().__init__(name, run_dir, port)

    @property
    def emulator_host(self) -> str:
        """The value for ``BIGTABLE_EMULATOR_HOST``."""
        return self.address

    def argv(self) -> list[str]:
        return [str(install.tool_path("cbtemulator")), "-host", HOST, "-port", str(self.port)]

    def is_healthy(self) -> bool:
        return probes.bigtable_emulator_ready(HOST, self.port)


def render_envoy_config(
    *,
    listen_port: int,
    admin_port: int,
    upstream_ports: Mapping[str, int],
    descriptor_set: Path = DESCRIPTOR_SET,
    listen_address: str = HOST,
    route_timeout: str | None = None,
    template: Path = ENVOY_TEMPLATE,
    access_log_path: Path | str = "/dev/stdout",
    edge_settings: EdgeSettings | None = None,
    auth: EdgeAuth | None = None,
    replica_ports: Mapping[str, Sequence[int]] | None = None,
) -> str:
    """Fills envoy/envoy.yaml (see ``eventpipe.stack.edge``); a missing value raises KeyError.

    ``replica_ports`` lists every replica of a service (the cluster profile): Envoy balances
    each of that service's clusters over them, round robin.
    """
    rendered = edge.render_envoy_config(
        listen_port=listen_port,
        admin_port=admin_port,
        upstream_ports=upstream_ports,
        descriptor_set=descriptor_set,
        listen_address=listen_address,
        route_timeout=route_timeout,
        access_log_path=access_log_path,
        edge=edge_settings,
        auth=auth,
        template=template,
    )
    if not replica_ports:
        return rendered
    return spread_over_replicas(rendered, replica_ports)


def spread_over_replicas(rendered: str, replica_ports: Mapping[str, Sequence[int]]) -> str:
    """A rendered config whose upstream clusters list every replica of their service.

    The renderer takes one port per service; its clusters name the service's port (ingest's
    two clusters both do). Each cluster whose one endpoint is a replica's first port gets
    every replica of that service as endpoints; the rest of the config stays as rendered.
    """
    header = "".join(line + "\n" for line in rendered.splitlines() if line.startswith("#"))
    config: dict[str, Any] = yaml.safe_load(rendered)
    by_first_port = {ports[0]: list(ports) for ports in replica_ports.values() if ports}
    for cluster in config["static_resources"]["clusters"]:
        groups = cluster.get("load_assignment", {}).get("endpoints", [])
        for group in groups:
            endpoints = group["lb_endpoints"]
            address = endpoints[0]["endpoint"]["address"]["socket_address"]
            ports = by_first_port.get(int(address["port_value"]))
            if len(endpoints) != 1 or ports is None:
                continue
            group["lb_endpoints"] = [
                {
                    "endpoint": {
                        "address": {
                            "socket_address": {"address": address["address"], "port_value": port}
                        }
                    }
                }
                for port in ports
            ]
    return header + yaml.safe_dump(config, sort_keys=False, width=120)


class Envoy(Component):
    """Envoy transcoding REST to gRPC (and passing gRPC through) to the four services.

    With ``auth`` it requires a JWT (``jwt_authn`` on the local JWKS) on every API call;
    ``edge_settings`` (default: ``EVENTPIPE_EDGE_*`` at start) sets its limits. Access logs are
    JSON lines in ``<run_dir>/logs/envoy-access.log``.
    """

    startup_timeout = 30.0

    def __init__(
        self,
        run_dir: Path,
        port: int,
        admin_port: int,
        upstream_ports: Mapping[str, int],
        name: str = "envoy",
        *,
        auth: EdgeAuth | None = None,
        edge_settings: EdgeSettings | None = None,
        replica_ports: Mapping[str, Sequence[int]] | None = None,
    ) -> None:
        super().__init__(name, run_dir, port)
        self.admin_port = admin_port
        self.upstream_ports = dict(upstream_ports)
        self.replica_ports = {name: list(ports) for name, ports in (replica_ports or {}).items()}
        self.scheme = "http"
        self.auth = auth
        self.edge_settings = edge_settings

    @property
    def config_path(self) -> Path:
        return self.data_dir / "envoy.yaml"

    @property
    def access_log_path(self) -> Path:
        return self.run_dir / "logs" / f"{self.name}-access.log"

    @property
    def base_url(self) -> str:
        """The public listener's URL: ``https`` once a start rendered it with TLS."""
        return f"{self.scheme}://{HOST}:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"http://{HOST}:{self.admin_port}"

    def prepare(self) -> None:
        if not DESCRIPTOR_SET.exists():
            raise ComponentError(f"{DESCRIPTOR_SET} is missing: run `make protos` first")
        if self.auth is not None and not self.auth.jwks_file.exists():
            raise ComponentError(f"{self.auth.jwks_file} is missing: generate the keys first")
        try:
            settings = self.edge_settings or load_settings(EdgeSettings)
        except ConfigError as exc:
            raise ComponentError(exc.message) from None
        self.scheme = "https" if settings.tls else "http"
        self.access_log_path.parent.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(
            render_envoy_config(
                listen_port=self.port,
                admin_port=self.admin_port,
                upstream_ports=self.upstream_ports,
                access_log_path=self.access_log_path,
                edge_settings=settings,
                auth=self.auth,
                replica_ports=self.replica_ports,
            )
        )
        validate_envoy_config(self.config_path)

    def argv(self) -> list[str]:
        # A distinct base id per admin port lets several Envoys share the machine.
        return [
            str(install.tool_path("envoy")),
            "-c",
            str(self.config_path),
            "--base-id",
            str(self.admin_port),
            "--log-level",
            "warn",
        ]

    def is_healthy(self) -> bool:
        return probes.http_ok(f"{self.admin_url}/ready")


def validate_envoy_config(config_path: Path) -> None:
    """Runs ``envoy --mode validate``; raises ComponentError with Envoy's reason on failure."""
    result = subprocess.run(
        [str(install.tool_path("envoy")), "--mode", "validate", "-c", str(config_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if result.returncode != 0:
        raise ComponentError(f"envoy rejected {config_path}:\n{result.stdout}{result.stderr}")


class GrpcService(Component):
    """One EventPipe service, ``python -m <module>`` (the name by default: a replica is named
    ``ingest-2`` and runs ``ingest``), healthy when gRPC health says SERVING."""

    def __init__(
        self,
        name: str,
        run_dir: Path,
        port: int,
        env: Mapping[str, str],
        *,
        module: str | None = None,
    ) -> None:
        super().__init__(name, run_dir, port)
        self._env = dict(env)
        self.module = module or name

    @staticmethod
    def is_written(name: str) -> bool:
        """Whether ``services/<name>/__main__.py`` exists yet."""
        return (REPO_ROOT / "services" / name / "__main__.py").exists()

    def env(self) -> dict[str, str]:
        return {**os.environ, "PYTHONUNBUFFERED": "1", **self._env}

    @property
    def cwd(self) -> Path:
        return REPO_ROOT

    def argv(self) -> list[str]:
        return [sys.executable, "-m", self.module]

    def health(self) -> str:
        return probes.grpc_health(self.address)

    def safe_health(self) -> str:
        try:
            return self.health()
        except Exception as exc:
            return f"error: {exc}"

    def is_healthy(self) -> bool:
        return self.health() == "SERVING"


def spark_home() -> Path:
    """The pyspark package: a Spark distribution (``bin/spark-class``, ``jars/``)."""
    import pyspark

    return Path(pyspark.__file__).resolve().parent


class SparkDaemon(Component):
    """A Spark standalone daemon from the pyspark package, with a small heap.

    ``bin/spark-class`` is a shell script that asks Spark's launcher
    (``org.apache.spark.launcher.Main``) for the daemon's java command line and execs it; the
    daemon is started the same way, minus the shell, so its pidfile records the JVM's own
    command line (the one ``/proc`` shows, which is how a later ``down`` recognises it).
    """

    startup_timeout = 90.0
    main_class = ""

    def __init__(
        self,
        name: str,
        run_dir: Path,
        port: int,
        ui_port: int,
        env: Mapping[str, str],
        *,
        auth_secret: str | None = None,
    ) -> None:
        super().__init__(name, run_dir, port)
        self.ui_port = ui_port
        self._env = dict(env)
        self.auth_secret = auth_secret
        self._command: list[str] = []

    @property
    def properties_path(self) -> Path:
        """The daemon's Spark properties (``--properties-file``): the spark.authenticate secret
        lives there, readable by its owner only, never on a command line."""
        return self.data_dir / "spark-daemon.conf"

    @abstractmethod
    def daemon_args(self) -> list[str]:
        """The daemon's own arguments, as ``spark-class <main class>`` takes them."""

    def prepare(self) -> None:
        properties = {"spark.authenticate": "false"}
        if self.auth_secret is not None:
            properties = {
                "spark.authenticate": "true",
                "spark.authenticate.secret": self.auth_secret,
            }
        self.properties_path.unlink(missing_ok=True)
        self.properties_path.touch(mode=0o600)
        self.properties_path.write_text("".join(f"{k} {v}\n" for k, v in properties.items()))
        home = spark_home()
        args = [*self.daemon_args(), "--properties-file", str(self.properties_path)]
        result = subprocess.run(
            [
                *("java", "-Xmx128m", "-cp", f"{home / 'jars'}/*"),
                *("org.apache.spark.launcher.Main", self.main_class, *args),
            ],
            env=self.env(),
            capture_output=True,
            timeout=60,
            check=False,
        )
        command = [part.decode().strip() for part in result.stdout.split(b"\0") if part.strip()]
        if result.returncode != 0 or not command:
            raise ComponentError(
                f"Spark's launcher gave no command for {self.name}: {result.stderr.decode()}"
            )
        self._command = command

    def argv(self) -> list[str]:
        if not self._command:
            raise ComponentError(f"{self.name}: prepare() resolves the command first")
        return self._command

    @property
    def ui_url(self) -> str:
        return f"http://{HOST}:{self.ui_port}"

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            # spark-class reads these: the daemon's own heap, its address, and its files.
            "SPARK_HOME": str(spark_home()),
            # What bin/load-spark-env.sh exports for spark-class: pyspark's jars are Scala 2.13.
            "SPARK_SCALA_VERSION": "2.13",
            "SPARK_DAEMON_MEMORY": "256m",
            "SPARK_LOCAL_IP": HOST,
            "SPARK_LOG_DIR": str(self.data_dir),
            "SPARK_WORKER_DIR": str(self.data_dir / "work"),
            "PYSPARK_PYTHON": sys.executable,
            **self._env,
        }

    def status(self) -> dict[str, Any]:
        """The daemon's ``/json`` page (Spark's own status document)."""
        with urllib.request.urlopen(f"{self.ui_url}/json/", timeout=2.0) as response:
            document: dict[str, Any] = json.load(response)
        return document


class SparkMaster(SparkDaemon):
    """A Spark standalone master; ``master_url`` is what enrich's ``spark_master`` names."""

    main_class = "org.apache.spark.deploy.master.Master"

    def __init__(
        self,
        run_dir: Path,
        port: int,
        ui_port: int,
        env: Mapping[str, str],
        name: str = "spark-master",
        *,
        workers: int = 1,
        auth_secret: str | None = None,
    ) -> None:
        super().__init__(name, run_dir, port, ui_port, env, auth_secret=auth_secret)
        self.workers = workers

    @property
    def master_url(self) -> str:
        return f"spark://{HOST}:{self.port}"

    def daemon_args(self) -> list[str]:
        return [
            "--host",
            HOST,
            "--port",
            str(self.port),
            "--webui-port",
            str(self.ui_port),
        ]

    def is_healthy(self) -> bool:
        # Serving means able to run an application: alive, with its workers registered.
        status = self.status()
        alive = [w for w in status.get("workers", []) if w.get("state") == "ALIVE"]
        return status.get("status") == "ALIVE" and len(alive) >= self.workers


class SparkWorker(SparkDaemon):
    """A Spark standalone worker of ``master``, offering ``cores`` and ``memory`` to
    applications; healthy once the master lists it."""

    main_class = "org.apache.spark.deploy.worker.Worker"

    def __init__(
        self,
        run_dir: Path,
        master: SparkMaster,
        port: int,
        ui_port: int,
        env: Mapping[str, str],
        name: str = "spark-worker",
        *,
        cores: int = 2,
        memory: str = "2g",
        auth_secret: str | None = None,
    ) -> None:
        super().__init__(name, run_dir, port, ui_port, env, auth_secret=auth_secret)
        self.master = master
        self.cores = cores
        self.memory = memory

    def daemon_args(self) -> list[str]:
        return [
            self.master.master_url,
            "--host",
            HOST,
            "--port",
            str(self.port),
            "--webui-port",
            str(self.ui_port),
            "--cores",
            str(self.cores),
            "--memory",
            self.memory,
            "--work-dir",
            str(self.data_dir / "work"),
        ]

    def is_healthy(self) -> bool:
        workers = self.master.status().get("workers", [])
        return any(
            w.get("state") == "ALIVE" and w.get("webuiaddress", "").endswith(f":{self.ui_port}")
            for w in workers
        )


def _new_cluster_id() -> str:
    """A random KRaft cluster id (base64url of 16 bytes, as Kafka's own ``Uuid.randomUuid``),
    never starting with '-': the storage tool would read such an id as an option."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id
