"""Each service process: SERVING once its dependencies answer, and a clean exit on SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
from eventpipe.core.waiting import wait_until
from eventpipe.stack import probes
from eventpipe.stack.probes import free_port

from tests.helpers.http import metrics_text

REPO = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize("name", ["ingest", "store", "enrich", "query"])
def test_a_service_turns_serving_then_exits_zero_on_sigterm(
    name: str, service_env: dict[str, str], common_settings: object, tmp_path: Path
) -> None:
    port, metrics_port = free_port(), free_port()
    prefix = f"EVENTPIPE_{name.upper()}_"
    env = {
        **service_env,
        prefix + "HOST": "127.0.0.1",
        prefix + "PORT": str(port),
        prefix + "METRICS_PORT": str(metrics_port),
    }
    log = (tmp_path / f"{name}.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", name], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        address = f"127.0.0.1:{port}"

        def serving() -> bool:
            assert process.poll() is None, (tmp_path / f"{name}.log").read_text()
            try:
                return probes.grpc_health(address) == "SERVING"
            except Exception:
                return False

        wait_until(serving, timeout=90, what=f"{name} to be SERVING")
        assert "eventpipe_rpc_requests_total" in metrics_text(metrics_port)

        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0, (tmp_path / f"{name}.log").read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        log.close()
