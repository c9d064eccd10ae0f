"""`eventpipe enrich ...`: put a spec, start a job and follow it with a progress display.

    eventpipe enrich put-spec --tenant acme spec.json       # EnrichmentSpec in proto3 JSON
    eventpipe enrich run --tenant acme --start 2026-01-01T00:00:00Z --end 2026-01-02T00:00:00Z
    eventpipe enrich run --tenant acme --mode scheduled --interval 15m --window 1h --lateness 5m
    eventpipe enrich run --tenant acme --mode streaming --trigger 1s
    eventpipe enrich get --tenant acme JOB_ID
    eventpipe enrich cancel --tenant acme JOB_ID

``run`` follows the job until it ends (batch) or until Ctrl-C (scheduled, streaming; the job
keeps running on the server), and exits 0 on success, 1 on failure or cancellation.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from google.protobuf import json_format
from google.protobuf.timestamp_pb2 import Timestamp
from tqdm import tqdm

from eventpipe.cli import grpc_client
from eventpipe.client import EventPipeClient, EventPipeError
from eventpipe.client.client import JOB_DONE
from eventpipe.core.config import DEFAULT_PORTS
from eventpipe.enrich.v1 import enrich_pb2

MODES = {
    "batch": enrich_pb2.JOB_MODE_BATCH,
    "scheduled": enrich_pb2.JOB_MODE_SCHEDULED,
    "streaming": enrich_pb2.JOB_MODE_STREAMING,
}
TERMINAL = JOB_DONE
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d)$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    match = _DURATION.match(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r}: use a number with ms, s, m, h or d")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def parse_time(text: str) -> Timestamp:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"{text!r}: use RFC 3339, e.g. 2026-01-01T00:00:00Z"
        ) from exc
    if moment.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r}: give a time zone, e.g. Z")
    ts = Timestamp()
    ts.FromDatetime(moment)
    return ts


def _client(args: argparse.Namespace) -> EventPipeClient:
    return grpc_client.client(args.address, args.token, args.tenant)


def _describe(job: enrich_pb2.EnrichmentJob) -> str:
    c = job.counters
    state = enrich_pb2.JobState.Name(job.state).removeprefix("JOB_STATE_").lower()
    text = (
        f"{job.job_id} {state}: read {c.read}, enriched {c.enriched}, "
        f"unmatched {c.unmatched}, failed {c.failed}"
    )
    return text + (f"\nerror: {job.error}" if job.error else "")


def build_job(args: argparse.Namespace) -> enrich_pb2.EnrichmentJob:
    job = enrich_pb2.EnrichmentJob(mode=MODES[args.mode], spec_version=args.spec_version)
    if args.mode == "batch":
        if args.start:
            job.time_range.start_time.CopyFrom(args.start)
        if args.end:
            job.time_range.end_time.CopyFrom(args.end)
    elif args.mode == "scheduled":
        job.schedule.interval.FromMilliseconds(int(args.interval * 1000))
        job.schedule.window.FromMilliseconds(int(args.window * 1000))
        job.schedule.lateness.FromMilliseconds(int(args.lateness * 1000))
    else:
        job.trigger_interval.FromMilliseconds(int(args.trigger * 1000))
    return job


def follow(client: EventPipeClient, job: enrich_pb2.EnrichmentJob) -> int:
    batch = job.mode == enrich_pb2.JOB_MODE_BATCH
    with tqdm(total=100, unit="%", disable=not batch, file=sys.stderr) as bar:

        def show(update: enrich_pb2.EnrichmentJob) -> None:
            if batch:
                bar.n = round(update.progress * 100)
                c = update.counters
                bar.set_postfix(read=c.read, enriched=c.enriched, unmatched=c.unmatched)
                bar.refresh()
            else:
                print("\r" + _describe(update), end="", file=sys.stderr, flush=True)

        try:
            job = client.jobs.wait(job, on_update=show)
        except KeyboardInterrupt:
            print(f"\nstopped following; the job keeps running: {job.job_id}", file=sys.stderr)
            return 0
    print(_describe(job))
    return 0 if job.state == enrich_pb2.JOB_STATE_SUCCEEDED else 1


def run(args: argparse.Namespace) -> int:
    with _client(args) as client:
        try:
            job = client.jobs.create(build_job(args))
        except EventPipeError as exc:
            print(f"refused: {grpc_client.refusal(exc)}", file=sys.stderr)
            return 2
        print(f"started {job.job_id}", file=sys.stderr)
        if args.no_follow:
            print(job.job_id)
            return 0
        return follow(client, job)


def put_spec(args: argparse.Namespace) -> int:
    spec = json_format.Parse(Path(args.file).read_text(), enrich_pb2.EnrichmentSpec())
    with _client(args) as client:
        try:
            stored = client.jobs.put_spec(spec)
        except EventPipeError as exc:
            print(f"refused: {grpc_client.refusal(exc)}", file=sys.stderr)
            return 2
    print(f"stored spec version {stored.version}")
    return 0


def _show_job(
    args: argparse.Namespace, action: Callable[[EventPipeClient], enrich_pb2.EnrichmentJob]
) -> int:
    with _client(args) as client:
        try:
            job = action(client)
        except EventPipeError as exc:
            print(f"refused: {grpc_client.refusal(exc)}", file=sys.stderr)
            return 2
    print(_describe(job))
    return 0


def get(args: argparse.Namespace) -> int:
    return _show_job(args, lambda client: client.jobs.get(args.job_id))


def cancel(args: argparse.Namespace) -> int:
    return _show_job(args, lambda client: client.jobs.cancel(args.job_id))


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser("enrich", help="enrichment specs and jobs")
    commands = parser.add_subparsers(dest="enrich_command", required=True)
    default_address = os.environ.get(
        "EVENTPIPE_ENRICH_ADDRESS", f"127.0.0.1:{DEFAULT_PORTS['enrich']}"
    )

    def common(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--tenant", required=True)
        sub.add_argument("--address", default=default_address, help="enrich gRPC host:port")
        grpc_client.add_token_argument(sub)

    run_parser = commands.add_parser("run", help="start a job and follow it")
    common(run_parser)
    run_parser.add_argument("--mode", choices=sorted(MODES), default="batch")
    run_parser.add_argument("--start", type=parse_time, help="batch: RFC 3339 start (inclusive)")
    run_parser.add_argument("--end", type=parse_time, help="batch: RFC 3339 end (exclusive)")
    run_parser.add_argument("--interval", type=parse_duration, default=900.0)
    run_parser.add_argument("--window", type=parse_duration, default=3600.0)
    run_parser.add_argument("--lateness", type=parse_duration, default=300.0)
    run_parser.add_argument("--trigger", type=parse_duration, default=1.0)
    run_parser.add_argument("--spec-version", type=int, default=0)
    run_parser.add_argument("--no-follow", action="store_true", help="print the job id and exit")
    run_parser.set_defaults(func=run)

    spec_parser = commands.add_parser("put-spec", help="store a spec (proto3 JSON file)")
    common(spec_parser)
    spec_parser.add_argument("file")
    spec_parser.set_defaults(func=put_spec)

    for name, func in (("get", get), ("cancel", cancel)):
        sub = commands.add_parser(name, help=f"{name} a job")
        common(sub)
        sub.add_argument("job_id")
        sub.set_defaults(func=func)
