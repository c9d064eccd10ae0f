"""`eventpipe enrich run` turns its flags into the job it creates."""

from __future__ import annotations

import argparse

import pytest
from eventpipe.cli.enrich_cmd import build_job, parse_duration
from eventpipe.cli.main import build_parser
from eventpipe.enrich.v1 import enrich_pb2


def test_durations_read_with_their_units() -> None:
    assert parse_duration("15m") == 900
    assert parse_duration("250ms") == 0.25
    with pytest.raises(argparse.ArgumentTypeError):
        parse_duration("15 minutes")


def test_a_scheduled_run_carries_its_schedule() -> None:
    args = build_parser().parse_args(
        [
            "enrich",
            "run",
            "--tenant",
            "t",
            "--mode",
            "scheduled",
            "--interval",
            "15m",
            "--window",
            "1h",
            "--lateness",
            "2m",
        ]
    )
    job = build_job(args)
    assert job.mode == enrich_pb2.JOB_MODE_SCHEDULED
    assert (job.schedule.interval.seconds, job.schedule.window.seconds) == (900, 3600)
    assert job.schedule.lateness.seconds == 120


def test_a_batch_run_needs_zoned_times() -> None:
    args = build_parser().parse_args(
        ["enrich", "run", "--tenant", "t", "--start", "2026-01-01T00:00:00Z"]
    )
    assert build_job(args).time_range.start_time.seconds == 1767225600
    with pytest.raises(SystemExit):
        build_parser().parse_args(["enrich", "run", "--tenant", "t", "--start", "2026-01-01"])
