"""The client examples in examples/ run as a user runs them: as a script against the real
services behind the session's real Envoy."""

from __future__ import annotations

import os
import subprocess
import sys

from eventpipe.stack.components import Envoy

from tests.conftest import TESTS_DIR, Isolation, StartService

EXAMPLES = TESTS_DIR.parent / "examples"


def test_the_producer_example_sends_events_and_reads_every_one_back(
    start_service: StartService,
    upstream_ports: dict[str, int],
    envoy_proxy: Envoy,
    isolation: Isolation,
) -> None:
    for name in ("ingest", "store", "query"):
        start_service(name, port=upstream_ports[name], timeout=90)
    result = subprocess.run(
        [
            sys.executable,
            str(EXAMPLES / "client_producer.py"),
            "--target",
            f"127.0.0.1:{envoy_proxy.port}",
            "--tenant",
            isolation.tenant_id,
            "--count",
            "230",
        ],
        env={k: v for k, v in os.environ.items() if k != "EVENTPIPE_TOKEN"},
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "{'ACCEPTED': 230}" in result.stdout
    assert "read back 230 stored events" in result.stdout
