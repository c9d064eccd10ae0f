"""`eventpipe ingest FILE`: sends a JSON-lines or CSV file of events through StreamEvents.

``eventpipe ingest --backfill FILE`` sends history instead: batches through IngestEvents with
``backfill`` set, so that event times older than the live window are accepted up to the
service's backfill horizon (the token needs the ``admin`` scope). Both go through
``eventpipe.client``: the stream with a bounded number of batches in flight, the backfill
with the batching producer's retries (docs/client.md).

JSON lines hold one event each in the proto3 JSON form (as ``eventpipe demo generate`` writes
them). CSV needs the columns event_id, event_type, entity_id, event_time (RFC 3339); every
other non-empty column becomes an attribute, typed as int, float, bool (true/false) or string.
Lines that cannot be parsed are counted as rejected without being sent.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import threading
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf import json_format
from google.rpc import code_pb2
from tqdm import tqdm

from eventpipe.cli import grpc_client
from eventpipe.client import EventPipeError, ItemOutcome, ItemStatus
from eventpipe.client.settings import ClientSettings
from eventpipe.common.v1 import event_pb2, results_pb2
from eventpipe.ingest.v1 import ingest_pb2

CSV_COLUMNS = ("event_id", "event_type", "entity_id", "event_time")


@dataclass
class Summary:
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add_outcome(self, future: Future[ItemOutcome]) -> None:
        """Counts one event sent by the producer (a done callback: any sender thread)."""
        error = future.exception()
        with self._lock:
            if error is None:
                if future.result().status is ItemStatus.DUPLICATE:
                    self.duplicates += 1
                else:
                    self.accepted += 1
                return
            self.rejected += 1
            code = getattr(getattr(error, "code", None), "name", "UNKNOWN")
            self.reasons[f"{code} {error}".strip()] += 1

    def add(self, response: ingest_pb2.StreamEventsResponse) -> None:
        for result in response.results:
            if result.status == results_pb2.ITEM_STATUS_ACCEPTED:
                self.accepted += 1
            elif result.status == results_pb2.ITEM_STATUS_DUPLICATE:
                self.duplicates += 1
            else:
                self.rejected += 1
                code = code_pb2.Code.Name(result.code)
                self.reasons[f"{code} {result.message}".strip()] += 1


def _typed(value: str) -> object:
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    if value.lower() in ("true", "false"):
        return value.lower() == "true"
    return value


def _csv_event(row: dict[str, str]) -> event_pb2.Event:
    missing = [c for c in CSV_COLUMNS if c not in row]
    if missing:
        raise ValueError(f"missing CSV columns: {', '.join(missing)}")
    event = event_pb2.Event(
        tenant_id=row.get("tenant_id", ""),
        event_id=row["event_id"],
        event_type=row["event_type"],
        entity_id=row["entity_id"],
    )
    if row["event_time"]:
        event.event_time.FromJsonString(row["event_time"])
    for key, raw in row.items():
        if key in CSV_COLUMNS or key == "tenant_id" or raw in ("", None):
            continue
        value = _typed(raw)
        slot = event.attributes[key]
        if isinstance(value, bool):
            slot.bool_value = value
        elif isinstance(value, int):
            slot.int_value = value
        elif isinstance(value, float):
            slot.double_value = value
        else:
            slot.string_value = str(value)
    return event


def read_events(path: Path, summary: Summary) -> Iterator[event_pb2.Event]:
    """Events of a .csv file, or of JSON lines otherwise; bad lines go to ``summary``."""
    with path.open(encoding="utf-8", newline="") as handle:
        if path.suffix.lower() == ".csv":
            for number, row in enumerate(csv.DictReader(handle), start=2):
                try:
                    yield _csv_event(row)
                except ValueError as exc:
                    summary.rejected += 1
                    summary.reasons[f"unparsable line {number}: {exc}"] += 1
            return
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                yield json_format.ParseDict(json.loads(line), event_pb2.Event())
            except (ValueError, json_format.ParseError) as exc:
                summary.rejected += 1
                summary.reasons[f"unparsable line {number}: {exc}"] += 1


def stream_file(
    path: Path,
    target: str,
    tenant_id: str,
    batch_size: int,
    progress: bool = True,
    token: str | None = None,
    backfill: bool = False,
) -> Summary:
    """Sends the file's events; ``backfill`` sends them as history (IngestEvents.backfill).

    Raises:
        EventPipeError: the service refused the whole stream (or, for a backfill, the call
            could not start at all).
    """
    summary = Summary()
    total = None
    if progress:
        with path.open("rb") as handle:
            total = sum(1 for line in handle if line.strip()) - (path.suffix == ".csv")
    bar = tqdm(total=total, unit="ev", disable=not progress)
    with grpc_client.client(target, token, tenant_id) as client:
        if backfill:
            producer = client.producer(
                backfill=True,
                # History is bulk work: its events keep the library's delivery deadline.
                settings=dataclasses.replace(
                    ClientSettings().producer(), max_batch_events=batch_size
                ),
            )
            for event in read_events(path, summary):
                future = producer.send(event)
                future.add_done_callback(summary.add_outcome)
                future.add_done_callback(lambda _done: bar.update(1))
            producer.close()
        else:
            for response in client.events.stream(read_events(path, summary), batch_size=batch_size):
                summary.add(response)
                bar.update(len(response.results))
    bar.close()
    return summary


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser("ingest", help="send a JSON-lines or CSV file of events")
    parser.add_argument("file", type=Path)
    parser.add_argument("--tenant", default="demo", help="tenant owning the events")
    parser.add_argument(
        "--target",
        default=f"127.0.0.1:{os.environ.get('EVENTPIPE_INGEST_PORT', '50051')}",
        help="ingest gRPC address (default: the local stack's)",
    )
    parser.add_argument(
        "--batch-size", type=int, default=500, choices=range(1, 1001), metavar="1..1000"
    )
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument(
        "--backfill",
        action="store_true",
        help="history: accept event times older than the live window, up to the backfill "
        "horizon (admin scope; docs/ingest.md)",
    )
    grpc_client.add_token_argument(parser)
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    try:
        summary = stream_file(
            args.file,
            args.target,
            args.tenant,
            args.batch_size,
            not args.no_progress,
            args.token,
            backfill=args.backfill,
        )
    except EventPipeError as error:
        print(f"ingest failed: {grpc_client.refusal(error)}")
        return 1
    print(
        f"accepted {summary.accepted}, duplicates {summary.duplicates}, rejected {summary.rejected}"
    )
    for reason, count in summary.reasons.most_common():
        print(f"  {count:>8}  {reason}")
    return 0 if summary.rejected == 0 else 3
