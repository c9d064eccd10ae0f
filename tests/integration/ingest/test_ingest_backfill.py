"""Backfill through real processes: ingest (auth on) accepts an old event only from an admin
with ``backfill``, marks it on the real Kafka topic, and the real store consumer stores it in
the emulator instead of dead-lettering it; beyond the horizon the event is refused naming
event_time. Raw retention 400 days and a 365-day horizon, as a history load is configured."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from eventpipe.common.v1 import event_pb2, results_pb2
from eventpipe.core.auth import generate_local_keys, mint_token
from eventpipe.core.config import CommonSettings
from eventpipe.core.storage.times import timestamp_from_micros
from eventpipe.core.topic_contract import HEADER_BACKFILL
from eventpipe.core.waiting import wait_until
from eventpipe.ingest.v1 import ingest_pb2
from eventpipe.stack.components import BigtableEmulator, GrpcService, KafkaBroker
from eventpipe.stack.probes import free_port
from google.rpc import code_pb2

from tests.conftest import Isolation, start_or_fail
from tests.integration.ingest.conftest import IngestUnderTest, read_topic, start_ingest
from tests.integration.ingest.events import now_micros
from tests.integration.store.conftest import FAST_STORE_ENV, stored_event_cells

DAY_MICROS = 86_400 * 1_000_000
RETENTION = {
    "EVENTPIPE_RAW_RETENTION_DAYS": "400",
    "EVENTPIPE_BACKFILL_HORIZON_DAYS": "365",
}


@dataclass
class History:
    """Ingest with auth on and a store consumer, on one isolation's topics and tables."""

    ingest: IngestUnderTest
    store: GrpcService
    common: CommonSettings
    private_key: bytes
    jwks: Path

    def metadata(self, *scopes: str) -> list[tuple[str, str]]:
        token = mint_token(
            self.private_key, self.jwks, tenant_id=self.ingest.tenant_id, scopes=scopes
        )
        return [("authorization", f"Bearer {token}")]


@pytest.fixture(scope="module")
def history(
    run_dir: Path,
    kafka_broker: KafkaBroker,
    bigtable_emulator: BigtableEmulator,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[History]:
    private_path, jwks = generate_local_keys(tmp_path_factory.mktemp("auth"))
    isolation = Isolation.new()
    ingest = start_ingest(
        run_dir,
        kafka_broker,
        isolation,
        env={"EVENTPIPE_AUTH_JWKS_FILE": str(jwks), **RETENTION},
    )
    port = free_port()
    store = GrpcService(
        "store",
        run_dir / "services" / f"store-{port}-{uuid.uuid4().hex[:6]}",
        port,
        {
            "EVENTPIPE_KAFKA_BOOTSTRAP_SERVERS": kafka_broker.bootstrap_servers,
            "EVENTPIPE_BIGTABLE_PROJECT": "eventpipe-local",
            "EVENTPIPE_BIGTABLE_INSTANCE": "eventpipe",
            "BIGTABLE_EMULATOR_HOST": bigtable_emulator.emulator_host,
            "EVENTPIPE_TOPIC_PREFIX": isolation.topic_prefix,
            "EVENTPIPE_TABLE_PREFIX": isolation.table_prefix,
            "EVENTPIPE_STORE_HOST": "127.0.0.1",
            "EVENTPIPE_STORE_PORT": str(port),
            "EVENTPIPE_STORE_METRICS_PORT": str(free_port()),
            **FAST_STORE_ENV,
            **RETENTION,
        },
    )
    try:
        start_or_fail(store, 90)
        common = ingest.settings.model_copy(
            update={
                "table_prefix": isolation.table_prefix,
                "bigtable_project": "eventpipe-local",
                "bigtable_instance": "eventpipe",
            }
        )
        yield History(ingest, store, common, private_path.read_bytes(), jwks)
    finally:
        store.stop()
        ingest.service.stop()


def old_event(event_id: str, days_old: float) -> event_pb2.Event:
    event = event_pb2.Event(event_id=event_id, event_type="purchase", entity_id="user-1")
    event.event_time.CopyFrom(timestamp_from_micros(now_micros() - int(days_old * DAY_MICROS)))
    event.attributes["amount"].double_value = 12.5
    return event


def ingest_events(
    history: History, events: list[event_pb2.Event], *, backfill: bool, scopes: tuple[str, ...]
) -> ingest_pb2.IngestEventsResponse:
    with history.ingest.channel() as channel:
        reply: ingest_pb2.IngestEventsResponse = history.ingest.stub(channel).IngestEvents(
            ingest_pb2.IngestEventsRequest(
                tenant_id=history.ingest.tenant_id, events=events, backfill=backfill
            ),
            metadata=history.metadata(*scopes),
            timeout=30,
        )
        return reply


def test_an_admin_backfill_of_a_200_day_old_event_is_acknowledged_marked_and_stored(
    history: History,
) -> None:
    reply = ingest_events(
        history, [old_event("hist-200", 200)], backfill=True, scopes=("ingest", "admin")
    )
    assert [r.status for r in reply.results] == [results_pb2.ITEM_STATUS_ACCEPTED]
    key_prefix = f"{history.ingest.tenant_id}#".encode()
    (message,) = read_topic(
        history.ingest.settings,
        1,
        key_prefix=key_prefix,
        until=lambda found: any(b"hist-200" in (m.value() or b"") for m in found),
    )
    assert (HEADER_BACKFILL, b"1") in (message.headers() or [])
    wait_until(
        lambda: "hist-200" in stored_event_cells(history.common),
        timeout=60,
        what="the backfilled event stored by the store consumer",
    )


def test_a_backfill_without_the_admin_scope_is_permission_denied(history: History) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        ingest_events(history, [old_event("hist-denied", 200)], backfill=True, scopes=("ingest",))
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_an_old_event_without_backfill_is_refused_naming_event_time(history: History) -> None:
    reply = ingest_events(
        history, [old_event("hist-live", 200)], backfill=False, scopes=("ingest", "admin")
    )
    (result,) = reply.results
    assert result.code == code_pb2.INVALID_ARGUMENT
    assert [v.field for v in result.violations] == ["event_time"]
    assert "retention of 30 days" in result.message


def test_a_backfill_beyond_the_horizon_is_refused_naming_event_time(history: History) -> None:
    reply = ingest_events(
        history, [old_event("hist-too-old", 370)], backfill=True, scopes=("ingest", "admin")
    )
    (result,) = reply.results
    assert result.status == results_pb2.ITEM_STATUS_REJECTED
    assert result.code == code_pb2.INVALID_ARGUMENT
    assert [(v.field, v.description) for v in result.violations] == [
        ("event_time", "is older than the backfill horizon of 365 days")
    ]
