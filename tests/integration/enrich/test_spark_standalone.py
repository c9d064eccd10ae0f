"""Enrich on a Spark standalone master whose daemons run with ``spark.authenticate``: a
session built from enrich's settings (``spark://`` master and the shared secret) runs Python
tasks on the worker's executor, and a driver with another secret is refused. The master and
worker are the real daemons of the pyspark package (``eventpipe.stack.components``); each
driver runs in a process of its own, since this test process already holds a SparkContext."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from eventpipe.stack.components import SparkMaster, SparkWorker
from eventpipe.stack.probes import free_port

from tests.conftest import start_or_fail

SECRET = "standalone-test-secret-0123456789"
DRIVER = """
import sys
from enrich.adapters.spark.session import SparkSettings, build_session

settings = SparkSettings(
    master=sys.argv[1],
    app_name="enrich-standalone-test",
    auth_secret=sys.argv[2],
    extra_conf=(
        ("spark.executor.memory", "512m"),
        ("spark.driver.memory", "512m"),
        ("spark.driver.host", "127.0.0.1"),
        ("spark.driver.bindAddress", "127.0.0.1"),
    ),
)
spark = build_session(settings)
total = spark.sparkContext.parallelize(range(100), 2).map(lambda x: x * 2).sum()
print("SUM", total)
spark.stop()
"""


@pytest.fixture(scope="module")
def spark_master(run_dir: Path) -> Iterator[SparkMaster]:
    env = {
        "SPARK_DAEMON_JAVA_OPTS": f"-Dspark.authenticate=true -Dspark.authenticate.secret={SECRET}"
    }
    # Healthy once ALIVE (workers=0): the worker starts after it and waits to be listed.
    master = SparkMaster(
        run_dir, free_port(), free_port(), env, name="enrich-auth-master", workers=0
    )
    worker = SparkWorker(
        run_dir, master, 0, free_port(), env, name="enrich-auth-worker", cores=1, memory="1g"
    )
    start_or_fail(master)
    start_or_fail(worker)
    try:
        yield master
    finally:
        worker.stop()
        master.stop()


def run_driver(
    master: SparkMaster, secret: str, timeout: float
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", DRIVER, master.master_url, secret],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_a_session_with_the_shared_secret_runs_python_tasks_on_the_standalone_worker(
    spark_master: SparkMaster,
) -> None:
    done = run_driver(spark_master, SECRET, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "SUM 9900" in done.stdout


def test_a_driver_with_another_secret_is_refused_by_the_master(
    spark_master: SparkMaster,
) -> None:
    # Spark's client gives up after its registration retries (3 x 20 s), failing the job.
    refused = run_driver(spark_master, "another-secret-0123456789abc", timeout=300)
    assert refused.returncode != 0
    assert "SUM" not in refused.stdout
