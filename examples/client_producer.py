"""Send events with the Python client's batching producer, then read them back page by page.

    python examples/client_producer.py --target localhost:8080 --tenant demo --count 200

With auth on, pass ``--token`` (or set EVENTPIPE_TOKEN), for example
``$(eventpipe auth token --tenant demo --scope ingest,query)``. Each event gets a future; the
script counts the outcomes, waits (with a deadline) until the store has written them, and reads
them back through the query service, which pages by itself. docs/client.md explains the client.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
from collections import Counter
from datetime import UTC, datetime

from eventpipe.client import EventPipeClient, EventPipeError
from eventpipe.common.v1 import event_pb2
from eventpipe.query.v1 import query_pb2


def make_event(run: str, entity_id: str, n: int) -> event_pb2.Event:
    event = event_pb2.Event(event_id=f"{run}-{n}", event_type="purchase", entity_id=entity_id)
    event.event_time.FromDatetime(datetime.now(UTC))
    event.attributes["quantity"].int_value = 1 + n % 3
    event.attributes["product_id"].string_value = f"sku-{n % 40:05d}"
    return event


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="localhost:8080", help="Envoy's (or ingest's) address")
    parser.add_argument("--tenant", default="demo")
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--token", default=os.environ.get("EVENTPIPE_TOKEN"))
    parser.add_argument("--wait", type=float, default=60.0, help="seconds to wait for the store")
    args = parser.parse_args()

    run = f"example-{uuid.uuid4().hex[:8]}"
    entity_id = f"user-{run}"
    outcomes: Counter[str] = Counter()
    with EventPipeClient(args.target, token=args.token, tenant_id=args.tenant) as client:
        futures = [client.events.send(make_event(run, entity_id, n)) for n in range(args.count)]
        client.events.flush()
        for future in futures:
            try:
                outcomes[future.result().status.name] += 1
            except EventPipeError as error:
                outcomes[f"{error.code.name}: {error}"] += 1
        print(f"sent {args.count} events for {entity_id}: {dict(outcomes)}")

        deadline = time.monotonic() + args.wait
        while True:
            events = list(client.entities.iter_events(entity_id, view=query_pb2.EVENT_VIEW_RAW))
            if len(events) >= outcomes["ACCEPTED"] or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        newest = events[0].event.event_id if events else "none"
        print(f"read back {len(events)} stored events (newest {newest})")
    return 0 if len(events) == args.count == outcomes["ACCEPTED"] else 1


if __name__ == "__main__":
    sys.exit(main())
