"""The protobuf contracts: versioned packages, REST mappings, and a clean `buf lint`."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from eventpipe.enrich.v1 import enrich_pb2
from eventpipe.ingest.v1 import ingest_pb2
from eventpipe.query.v1 import query_pb2
from eventpipe.stack.install import tool_path
from eventpipe.store.v1 import store_pb2
from google.api import annotations_pb2

REPO = Path(__file__).resolve().parents[3]
SERVICES = [
    ingest_pb2.DESCRIPTOR.services_by_name["IngestService"],
    store_pb2.DESCRIPTOR.services_by_name["StoreService"],
    enrich_pb2.DESCRIPTOR.services_by_name["EnrichService"],
    query_pb2.DESCRIPTOR.services_by_name["QueryService"],
]
STREAMING_ONLY = {"eventpipe.ingest.v1.IngestService.StreamEvents"}


def test_each_service_sits_in_its_own_versioned_package() -> None:
    assert [s.full_name for s in SERVICES] == [
        "eventpipe.ingest.v1.IngestService",
        "eventpipe.store.v1.StoreService",
        "eventpipe.enrich.v1.EnrichService",
        "eventpipe.query.v1.QueryService",
    ]


@pytest.mark.parametrize("method", [m for s in SERVICES for m in s.methods], ids=lambda m: m.name)
def test_every_unary_rpc_declares_its_rest_mapping(method) -> None:  # type: ignore[no-untyped-def]
    rule = method.GetOptions().Extensions[annotations_pb2.http]
    if method.full_name in STREAMING_ONLY:
        assert not rule.WhichOneof("pattern")
    else:
        assert rule.WhichOneof("pattern") in {"get", "post", "put", "patch", "delete"}


def _buf(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(tool_path("buf")), *args], cwd=REPO, capture_output=True, text=True, timeout=120
    )


def test_buf_lint_is_clean() -> None:
    result = _buf("lint")
    assert result.returncode == 0, result.stdout + result.stderr


def test_buf_format_has_nothing_to_change() -> None:
    result = _buf("format", "-d", "--exit-code")
    assert result.returncode == 0, result.stdout + result.stderr
