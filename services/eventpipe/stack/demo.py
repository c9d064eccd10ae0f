"""Demo data for `eventpipe stack up`: a small synthetic clickstream, loaded once services run.

Dimensions (users, products) go through StoreService.UpsertDimensionRecords, events through
IngestService.StreamEvents. A service that is missing or does not implement its RPC yet only
earns a warning: the demo data is a convenience and must never fail `make up`.

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

import grpc

from eventpipe.core.auth import OPERATOR_SCOPE
from eventpipe.demo.generator import DemoSpec, batches, generate
from eventpipe.enrich.v1 import enrich_pb2, enrich_pb2_grpc
from eventpipe.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from eventpipe.stack.components import BigtableEmulator
from eventpipe.stack.stack import StackConfig, dev_token
from eventpipe.store.v1 import store_pb2, store_pb2_grpc

log = logging.getLogger(__name__)

DEMO_TENANT = "demo"
DEMO_SPEC = DemoSpec(users=100, products=40, sessions=300, days=3, seed=7)
ANCHOR_FILE = "demo-anchor.json"
SECOND_MICROS = 1_000_000


def _warn(message: str) -> None:
    log.warning(message)
    print(f"demo data: WARNING: {message}")


Metadata = list[tuple[str, str]] | None


def _bearer(config: object, tenant: str | None, scopes: list[str]) -> Metadata:
    """The authorization metadata of a dev token; None when auth is off (or no stack config)."""
    token = dev_token(config, tenant, scopes) if isinstance(config, StackConfig) else None
    return [("authorization", f"Bearer {token}")] if token else None


def _describe(error: grpc.RpcError) -> str:
    return f"{error.code().name}: {error.details()}"  # type: ignore[attr-defined]


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
    metadata = _bearer(config, tenant, ["ingest", "admin"])
    # The store's consumer status spans tenants: only an operator token may read it.
    operator_metadata = _bearer(config, None, [OPERATOR_SCOPE])
    data = generate(dataclasses.replace(spec, now_micros=_anchor_for(config)))

    with grpc.insecure_channel(f"127.0.0.1:{ports['store']}") as channel:
        store = store_pb2_grpc.StoreServiceStub(channel)
        for dimension, records in (("users", data.users), ("products", data.products)):
            try:
                written = 0
                for chunk in batches(records, 500):
                    response = store.UpsertDimensionRecords(
                        store_pb2.UpsertDimensionRecordsRequest(
                            tenant_id=tenant, dimension=dimension, records=chunk
                        ),
                        timeout=30,
                        metadata=metadata,
                    )
                    written += response.summary.accepted_count
                print(f"demo data: {written} {dimension} versions upserted")
            except grpc.RpcError as error:  # e.g. UNIMPLEMENTED while the store is being built
                _warn(f"{dimension} not loaded, the store answered {_describe(error)}")
                break

    with grpc.insecure_channel(f"127.0.0.1:{ports['ingest']}") as channel:
        ingest = ingest_pb2_grpc.IngestServiceStub(channel)
        requests = (
            ingest_pb2.StreamEventsRequest(batch_id=str(n), tenant_id=tenant, events=chunk)
            for n, chunk in enumerate(batches(data.events, 500))
        )
        try:
            accepted = sum(
                r.summary.accepted_count
                for r in ingest.StreamEvents(requests, timeout=120, metadata=metadata)
            )
            print(f"demo data: {accepted} of {len(data.events)} events ingested (tenant {tenant})")
        except grpc.RpcError as error:
            _warn(f"events not ingested, ingest answered {_describe(error)}")
            return
    _enrich_demo(ports, metadata, operator_metadata, tenant)


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


def _wait_until_stored(ports: dict[str, int], metadata: Metadata, timeout: float) -> bool:
    """True once the store consumer has no lag; False at the deadline or when the store does
    not answer (then enrichment runs on what is stored)."""
    with grpc.insecure_channel(f"127.0.0.1:{ports['store']}") as channel:
        store = store_pb2_grpc.StoreServiceStub(channel)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                status = store.GetConsumerStatus(
                    store_pb2.GetConsumerStatusRequest(), timeout=10, metadata=metadata
                )
            except grpc.RpcError as error:
                _warn(f"the store's consumer status answered {_describe(error)}")
                return False
            if status.partitions and all(p.lag == 0 for p in status.partitions):
                return True
            time.sleep(0.5)
    return False


def _enrich_demo(
    ports: dict[str, int],
    metadata: Metadata,
    operator_metadata: Metadata,
    tenant: str,
    timeout: float = 240,
) -> None:
    """Stores the demo enrichment spec and runs one batch job over the demo events."""
    try:
        if not _wait_until_stored(ports, operator_metadata, timeout=60):
            _warn("the store consumer did not catch up (60 s at most); enriching what is stored")
        with grpc.insecure_channel(f"127.0.0.1:{ports['enrich']}") as channel:
            enrich = enrich_pb2_grpc.EnrichServiceStub(channel)
            enrich.PutEnrichmentSpec(
                enrich_pb2.PutEnrichmentSpecRequest(tenant_id=tenant, spec=DEMO_ENRICHMENT_SPEC),
                timeout=30,
                metadata=metadata,
            )
            job = enrich.CreateEnrichmentJob(
                enrich_pb2.CreateEnrichmentJobRequest(
                    tenant_id=tenant,
                    job=enrich_pb2.EnrichmentJob(mode=enrich_pb2.JOB_MODE_BATCH),
                ),
                timeout=30,
                metadata=metadata,
            ).job
            print(f"demo data: enrichment job {job.job_id} started (Spark, local mode) ...")
            deadline = time.monotonic() + timeout
            done = {
                enrich_pb2.JOB_STATE_SUCCEEDED,
                enrich_pb2.JOB_STATE_FAILED,
                enrich_pb2.JOB_STATE_CANCELLED,
            }
            while job.state not in done and time.monotonic() < deadline:
                time.sleep(1)
                job = enrich.GetEnrichmentJob(
                    enrich_pb2.GetEnrichmentJobRequest(tenant_id=tenant, job_id=job.job_id),
                    timeout=30,
                    metadata=metadata,
                ).job
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
    except grpc.RpcError as error:
        _warn(f"demo enrichment not run, a service answered {_describe(error)}")
