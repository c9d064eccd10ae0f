"""`eventpipe dimensions load` against a real store service and emulator."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import grpc
from eventpipe.stack.components import GrpcService
from eventpipe.store.v1 import store_pb2, store_pb2_grpc

from tests.conftest import Isolation


def test_a_csv_file_loads_in_batches_and_reports_the_rejected_record(
    start_store: Callable[..., GrpcService], isolation: Isolation, tmp_path: Path
) -> None:
    store = start_store()
    path = tmp_path / "products.csv"
    lines = ["key,valid_from,price:double,category"]
    lines += [f"p{i},2024-01-01T00:00:00Z,{i}.5,c{i % 7}" for i in range(1200)]
    lines.append("bad key,2024-01-01T00:00:00Z,1.0,x")
    path.write_text("\n".join(lines) + "\n")

    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "eventpipe.cli.main",
            "dimensions",
            "load",
            str(path),
            "--dimension",
            "products",
            "--tenant",
            isolation.tenant_id,
            "--address",
            store.address,
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 1, result.stderr
    assert "1200 accepted, 0 duplicate, 1 rejected" in result.stdout
    assert "record 1200 (bad key): records[200].key" in result.stdout

    with grpc.insecure_channel(store.address) as channel:
        record = (
            store_pb2_grpc.StoreServiceStub(channel)
            .GetDimensionRecord(
                store_pb2.GetDimensionRecordRequest(
                    tenant_id=isolation.tenant_id, dimension="products", key="p1111"
                ),
                timeout=10,
            )
            .record
        )
    assert record.attributes["price"].double_value == 1111.5
    assert record.attributes["category"].string_value == "c5"
