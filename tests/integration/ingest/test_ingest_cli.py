"""`eventpipe ingest FILE` streams JSON lines and CSV through StreamEvents and sums up;
`eventpipe ingest --backfill FILE` loads history older than the live window."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from eventpipe.cli.ingest_cmd import stream_file
from eventpipe.cli.main import main
from eventpipe.demo.generator import DemoSpec, generate, write

from tests.integration.ingest.conftest import IngestUnderTest
from tests.integration.ingest.events import now_micros


@pytest.fixture(scope="module")
def ingest_env() -> dict[str, str]:
    """Raw rows kept 90 days: the backfill horizon (their retention) then reaches past the
    30-day live window."""
    return {"EVENTPIPE_RAW_RETENTION_DAYS": "90"}


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


def test_history_is_refused_live_and_accepted_with_backfill(
    ingest_service: IngestUnderTest, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    forty_days_ago = datetime.fromtimestamp(now_micros() / 1e6 - 40 * 86400, UTC)
    when = forty_days_ago.isoformat().replace("+00:00", "Z")
    path = tmp_path / "history.csv"
    path.write_text(
        "event_id,event_type,entity_id,event_time,qty\n"
        + "".join(f"h-{n},purchase,user-{n % 3},{when},{n}\n" for n in range(12))
    )
    target = ["--tenant", f"{ingest_service.tenant_id}-backfill", "--target"]
    target += [ingest_service.address, "--batch-size", "5", "--no-progress"]

    assert main(["ingest", str(path), *target]) == 3
    assert "accepted 0, duplicates 0, rejected 12" in capsys.readouterr().out

    assert main(["ingest", "--backfill", str(path), *target]) == 0
    assert "accepted 12, duplicates 0, rejected 0" in capsys.readouterr().out
