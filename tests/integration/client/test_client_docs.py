"""Every ``python`` block of docs/client.md runs, in order, in one namespace, against the real
services (ingest, store with its consumer, query, enrich on Spark) behind the session's real
Envoy, on Kafka and the Bigtable emulator: the page's examples are what a user gets."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from eventpipe.stack.components import Envoy

from tests.conftest import TESTS_DIR, Isolation, StartService

DOC = TESTS_DIR.parent / "docs" / "client.md"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


def python_blocks(path: Path) -> list[str]:
    return BLOCK.findall(path.read_text(encoding="utf-8"))


@pytest.fixture
def services_behind_envoy(
    start_service: StartService, upstream_ports: dict[str, int], envoy_proxy: Envoy
) -> str:
    """The four services on the ports the session's Envoy routes to; Envoy's gRPC address.

    Raw rows are kept 90 days, so that the backfill horizon (the raw retention) reaches the
    page's 45-day-old event."""
    history = {"EVENTPIPE_RAW_RETENTION_DAYS": "90"}
    start_service("ingest", port=upstream_ports["ingest"], env=history)
    start_service("store", port=upstream_ports["store"], env=history, timeout=90)
    start_service("query", port=upstream_ports["query"], env=history)
    spark = {"EVENTPIPE_ENRICH_SPARK_MASTER": "local[2]", "EVENTPIPE_ENRICH_SPARK_PARTITIONS": "2"}
    start_service("enrich", port=upstream_ports["enrich"], env={**history, **spark}, timeout=120)
    return f"127.0.0.1:{envoy_proxy.port}"


def test_the_page_has_examples_of_every_helper() -> None:
    code = "\n".join(python_blocks(DOC))
    for helper in (
        "client.events.send",
        "client.events.flush",
        "client.events.stream",
        "client.entities.iter_events",
        "client.dimensions.upsert",
        "client.dimensions.delete",
        "client.entities.delete",
        "client.jobs.wait",
        "client.producer(backfill=True)",
        "except InvalidArgument",
    ):
        assert helper in code, helper


def test_every_python_block_of_the_client_page_runs_against_the_real_services(
    services_behind_envoy: str, isolation: Isolation, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EVENTPIPE_TARGET", services_behind_envoy)
    monkeypatch.setenv("EVENTPIPE_TENANT", isolation.tenant_id)
    monkeypatch.delenv("EVENTPIPE_TOKEN", raising=False)
    namespace: dict[str, Any] = {"__name__": "docs_client"}
    blocks = python_blocks(DOC)
    assert len(blocks) >= 10
    try:
        for number, block in enumerate(blocks, start=1):
            exec(compile(block, f"docs/client.md, python block {number}", "exec"), namespace)
    finally:
        client = namespace.get("client")
        if client is not None:
            client.close()
    assert namespace["accepted"] == 500
    assert len(namespace["stored"]) == 526
