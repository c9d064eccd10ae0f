"""`eventpipe ingest FILE` streams JSON lines and CSV through StreamEvents and sums up."""

from __future__ import annotations

from pathlib import Path

import pytest
from eventpipe.cli.ingest_cmd import stream_file
from eventpipe.cli.main import main
from eventpipe.demo.generator import DemoSpec, generate, write

from tests.integration.ingest.conftest import IngestUnderTest
from tests.integration.ingest.events import now_micros


def test_a_demo_jsonl_file_is_ingested_completely(
    ingest_service: IngestUnderTest, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = generate(DemoSpec(users=20, products=10, sessions=30, days=1, now_micros=now_micros()))
    paths = write(data, tmp_path)
    code = main(
        [
            "ingest",
            str(paths["events"]),
            "--tenant",
            f"{ingest_service.tenant_id}-cli",
            "--target",
            ingest_service.address,
            "--batch-size",
            "50",
            "--no-progress",
        ]
    )
    assert code == 0
    assert f"accepted {len(data.events)}, duplicates 0, rejected 0" in capsys.readouterr().out


def test_a_csv_file_reports_rejections_with_reasons(
    ingest_service: IngestUnderTest, tmp_path: Path
) -> None:
    path = tmp_path / "events.csv"
    path.write_text(
        "event_id,event_type,entity_id,event_time,price,qty,gift\n"
        "c-1,purchase,user-1,2099-01-01T00:00:00Z,9.5,2,true\n"
        "c-2,Purchase,user-1,{now},9.5,2,false\n"
        "c-3,purchase,user-2,{now},19.0,1,\n"
        "c-3,purchase,user-2,{now},19.0,1,\n".replace("{now}", "2020-01-01T00:00:00Z")
    )
    summary = stream_file(path, ingest_service.address, ingest_service.tenant_id, 10, False)
    assert (summary.accepted, summary.duplicates, summary.rejected) == (0, 0, 4)
    reasons = "\n".join(summary.reasons)
    assert "event_time: is more than 5 minutes in the future" in reasons
    assert "event_type: must start with a-z" in reasons
