"""The one long-lived SparkSession of an enrich process: its settings, how it is built, how a
job's driver call is bounded and interrupted, and how a broken session is discarded."""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from pyspark.sql import SparkSession

from enrich.domain.work import Cancelled

log = logging.getLogger(__name__)


class JobCancelled(Cancelled):
    """The job's cancellation token stopped it (the domain's Cancelled, raised by Spark)."""


class SessionBroken(RuntimeError):
    """The Spark session stopped working (driver JVM gone, SparkContext stopped, ...)."""


def tenant_pool(tenant_id: str) -> str:
    """The FAIR scheduler pool of a tenant's Spark jobs."""
    return f"tenant-{tenant_id}"


@dataclass
class DriverCall:
    """The driver side of one job, running on a thread of its own (see run_in_driver)."""

    job_id: str
    done: threading.Event = field(default_factory=threading.Event)
    interrupt: threading.Event = field(default_factory=threading.Event)
    jvm_thread: Any = None
    result: Any = None
    error: BaseException | None = None


def first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"[:500]


def call_with_timeout(fn: Callable[[], None], timeout: float, what: str) -> None:
    """Runs ``fn`` on a daemon thread; raises what it raised, or TimeoutError (a call to a
    hung JVM blocks forever, so the thread is left behind then)."""
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            fn()
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run, name=f"enrich-{what}", daemon=True)
    thread.start()
    thread.join(timeout)
    if not outcome:
        raise TimeoutError(f"{what} did not answer within {timeout:g} s")
    if outcome[0] is not None:
        raise outcome[0]


def discard_session(session: SparkSession | None) -> None:
    """Forgets a broken session and kills its driver JVM, so build_session starts a new one.

    pyspark keeps the gateway to the JVM and the active context in class attributes; a dead
    or poisoned JVM (OutOfMemoryError) must not be reused, so the gateway is shut down too."""
    from pyspark import SparkContext

    if session is not None:
        try:
            call_with_timeout(session.stop, 30.0, "Spark session stop")
        except Exception:
            log.info("the broken session did not stop cleanly", exc_info=True)
    SparkSession._instantiatedSession = None
    SparkSession._activeSession = None
    with SparkContext._lock:
        SparkContext._active_spark_context = None
        gateway = SparkContext._gateway
        SparkContext._gateway = None
        SparkContext._jvm = None
    if gateway is not None:
        proc = getattr(gateway, "proc", None)
        try:
            call_with_timeout(gateway.shutdown, 30.0, "Py4J gateway shutdown")
        except Exception:
            log.debug("gateway shutdown failed", exc_info=True)
        if proc is not None and proc.poll() is None:
            proc.kill()
            try:
                proc.wait(30)
            except Exception:
                log.warning("the old driver JVM did not exit", exc_info=True)


@dataclass(frozen=True)
class SparkSettings:
    master: str = "local[*]"
    app_name: str = "eventpipe-enrich"
    partitions: int = 8
    broadcast_max_rows: int = 100_000
    shuffle_partitions: int = 8
    jars: tuple[str, ...] = ()
    extra_conf: tuple[tuple[str, str], ...] = ()
    # spark.authenticate's shared secret, required by any master that is not local.
    auth_secret: str | None = field(default=None, repr=False)


def is_local_master(master: str) -> bool:
    """local, local[N], local[*], local[N,F]: the driver runs its executors in-process."""
    return master.startswith("local")


def session_conf(settings: SparkSettings) -> list[tuple[str, str]]:
    """The Spark settings of the session, in the order they are applied.

    With a master that is not local (``spark://``, ``k8s://``, ``yarn``), executors run in
    other processes and talk to the driver over Spark's RPC: it runs with ``spark.authenticate``
    and the shared secret (the master and workers must be configured with the same secret).
    They come after ``extra_conf``, so an extra setting cannot switch authentication off."""
    conf = [
        ("spark.scheduler.mode", "FAIR"),
        ("spark.sql.shuffle.partitions", str(settings.shuffle_partitions)),
        ("spark.ui.enabled", "false"),
        ("spark.sql.adaptive.enabled", "true"),
        # Columns are built by code, never parsed from clients; the broadcast decision is ours.
        ("spark.sql.autoBroadcastJoinThreshold", "-1"),
    ]
    if settings.jars:
        conf.append(("spark.jars", ",".join(settings.jars)))
    conf.extend(settings.extra_conf)
    if not is_local_master(settings.master):
        if not settings.auth_secret:
            raise ValueError(
                f"Spark master {settings.master} is not local: set a spark.authenticate secret"
            )
        conf.append(("spark.authenticate", "true"))
        conf.append(("spark.authenticate.secret", settings.auth_secret))
    return conf


class CancelFlag(Protocol):
    """A job's cancellation token (enrich.domain.work.CancellationToken, or an Event)."""

    def is_set(self) -> bool: ...


def build_session(settings: SparkSettings) -> SparkSession:
    # Local workers must run this interpreter (the venv with the enrich package), not whatever
    # `python3` is first on PATH; pyspark reads only the environment variable for this.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder.master(settings.master).appName(settings.app_name)
    for key, value in session_conf(settings):
        builder = builder.config(key, value)
    return builder.getOrCreate()
