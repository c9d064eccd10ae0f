"""Demo data for `eventpipe stack up`: a small synthetic clickstream, loaded once services run.

Dimensions (users, products) go through StoreService.UpsertDimensionRecords, events through
IngestService.StreamEvents, both by way of ``eventpipe.client``. A service that is missing or
does not implement its RPC yet only earns a warning: the demo data is a convenience and must
never fail `make up`.

Loading is idempotent: every `make up` loads the same events. Their times end at an anchor
chosen at the first load and kept in ``<run_dir>/demo-anchor.json`` for as long as the same
Bigtable emulator runs (the emulator keeps data in memory only, so a new emulator starts empty
and gets a new anchor, with events ending near its start). Same event ids at the same times
are the same row keys: a second load overwrites its rows, and the enrichment job it reruns
recomputes the same profiles.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from datetime import UTC, datetime
from pathlib import Path

from eventpipe.client import EventPipeClient, EventPipeError, RetryPolicy
from eventpipe.core.auth import OPERATOR_SCOPE
from eventpipe.demo.generator import DemoSpec, generate
from eventpipe.enrich.v1 import enrich_pb2
from eventpipe.stack.components import BigtableEmulator
from eventpipe.stack.stack import StackConfig, dev_token
from eventpipe.store.v1 import store_pb2

log = logging.getLogger(__name__)

DEMO_TENANT = "demo"
DEMO_SPEC = DemoSpec(users=100, products=40, sessions=300, days=3, seed=7)
ANCHOR_FILE = "demo-anchor.json"
SECOND_MICROS = 1_000_000
# The demo must never hold up `make up` for long: a service that does not answer is warned about.
DEMO_RETRY = RetryPolicy(deadline=10.0)


def _warn(message: str) -> None:
    log.warning(message)
    print(f"demo data: WARNING: {message}")


def _token(config: object, tenant: str | None, scopes: list[str]) -> str | None:
    """A dev token; None when auth is off (or no stack config)."""
    return dev_token(config, tenant, scopes) if isinstance(config, StackConfig) else None


def _client(ports: dict[str, int], token: str | None, tenant: str) -> EventPipeClient:
    """A client on the services' own ports (the demo loads before anyone needs Envoy)."""
    return EventPipeClient(
        f"127.0.0.1:{ports['ingest']}",
        token=token,
        tenant_id=tenant,
        service_targets={name: f"127.0.0.1:{ports[name]}" for name in ("store", "enrich")},
        retry=DEMO_RETRY,
    )


def _describe(error: EventPipeError) -> str:
    return f"{error.code.name}: {error}"


def demo_anchor_micros(
    run_dir: Path, emulator_pid: int | None, now_micros: int | None = None
) -> tuple[int, bool]:
    """The end of the demo window, and whether it was kept from an earlier load.

    Kept in ``<run_dir>/demo-anchor.json`` together with the emulator's pid: while that
    emulator runs (or when the run folder does not manage one, ``emulator_pid`` None, as in
    the tests) the anchor stays; a new emulator holds no data, so it gets a new anchor.
    """
    path = run_dir / ANCHOR_FILE
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        saved = None
    if (
        isinstance(saved, dict)
        and isinstance(saved.get("anchor_micros"), int)
        and saved.get("emulator_pid") == emulator_pid
    ):
        return saved["anchor_micros"], True
    now = time.time_ns() // 1000 if now_micros is None else now_micros
    anchor = now // SECOND_MICROS * SECOND_MICROS
    run_dir.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".json.partial")
    partial.write_text(json.dumps({"anchor_micros": anchor, "emulator_pid": emulator_pid}) + "\n")
    partial.replace(path)
    return anchor, False


def _anchor_for(config: object) -> int:
    if not isinstance(config, StackConfig):
        return time.time_ns() // 1000
    emulator_pid = BigtableEmulator(config.run_dir, config.emulator_port).pid
    anchor, kept = demo_anchor_micros(config.run_dir, emulator_pid)
    when = datetime.fromtimestamp(anchor / SECOND_MICROS, UTC).isoformat(timespec="seconds")
    if kept:
        print(f"demo data: the same events as before, ending at {when} ({ANCHOR_FILE})")
    else:
        print(f"demo data: events ending at {when}, kept for later loads ({ANCHOR_FILE})")
    return anchor


def load_demo_data(
    config: object, *, tenant: str = DEMO_TENANT, spec: DemoSpec = DEMO_SPEC
) -> None:
    """Generates the demo set and loads it through the running services (never raises).

    The same events every time for one emulator (see the module docstring).
    """
    ports = getattr(config, "service_ports", {"ingest": 50051, "store": 50052, "enrich": 50053})
    token = _token(config, tenant, ["ingest", "admin"])
    # The store's consumer status spans tenants: only an operator token may read it.
    operator_token = _token(config, None, [OPERATOR_SCOPE])
    data = generate(dataclasses.replace(spec, now_micros=_anchor_for(config)))

    with _client(ports, token, tenant) as client:
        for dimension, records in (("users", data.users), ("products", data.products)):
            try:
                response = client.dimensions.upsert(dimension, records, batch_size=500)
                print(f"demo data: {response.summary.accepted_count} {dimension} versions upserted")
            except EventPipeError as error:  # e.g. UNIMPLEMENTED while the store is being built
                _warn(f"{dimension} not loaded, the store answered {_describe(error)}")
                break
        try:
            accepted = sum(
                r.summary.accepted_count
                for r in client.events.stream(data.events, batch_size=500, timeout=120)
            )
            print(f"demo data: {accepted} of {len(data.events)} events ingested (tenant {tenant})")
        except EventPipeError as error:
            _warn(f"events not ingested, ingest answered {_describe(error)}")
            return
        with _client(ports, operator_token, tenant) as operator:
            _enrich_demo(client, operator)


DEMO_ENRICHMENT_SPEC = enrich_pb2.EnrichmentSpec(
    joins=[
        enrich_pb2.Join(dimension="users", key_field="entity_id", fields=["country", "tier"]),
        enrich_pb2.Join(
            dimension="products", key_field="attributes.product_id", fields=["price", "category"]
        ),
    ],
    derived_fields=[
        enrich_pb2.DerivedField(name="revenue", expression="quantity * products.price")
    ],
    metric_fields=["revenue", "quantity"],
)


def _wait_until_stored(operator: EventPipeClient, timeout: float) -> bool:
    """True once the store consumer has no lag; False at the deadline or when the store does
    not answer (then enrichment runs on what is stored)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            status = operator.store.get_consumer_status(store_pb2.GetConsumerStatusRequest())
        except EventPipeError as error:
            _warn(f"the store's consumer status answered {_describe(error)}")
            return False
        if status.partitions and all(p.lag == 0 for p in status.partitions):
            return True
        time.sleep(0.5)
    return False


def _enrich_demo(client: EventPipeClient, operator: EventPipeClient, timeout: float = 600) -> None:
    """Stores the demo enrichment spec and runs one batch job over the demo events."""
    try:
        if not _wait_until_stored(operator, timeout=60):
            _warn("the store consumer did not catch up (60 s at most); enriching what is stored")
        client.jobs.put_spec(DEMO_ENRICHMENT_SPEC)
        job = client.jobs.create(enrich_pb2.EnrichmentJob(mode=enrich_pb2.JOB_MODE_BATCH))
        print(f"demo data: enrichment job {job.job_id} started (Spark, local mode) ...")
        job = client.jobs.wait(job, timeout=timeout)
        if job.state == enrich_pb2.JOB_STATE_SUCCEEDED:
            c = job.counters
            print(
                f"demo data: enriched {c.enriched + c.unmatched} of {c.read} events "
                f"({c.unmatched} with an unmatched join)"
            )
        else:
            _warn(
                f"enrichment job {job.job_id} is {enrich_pb2.JobState.Name(job.state)}"
                f"{': ' + job.error if job.error else ''}"
            )
    except EventPipeError as error:
        _warn(f"demo enrichment not run, a service answered {_describe(error)}")
