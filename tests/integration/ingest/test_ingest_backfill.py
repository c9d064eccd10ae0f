"""Backfill through real processes: ingest (auth on) accepts an old event only from an admin
with ``backfill``, marks it on the real Kafka topic, and the real store consumer stores it in
the emulator instead of dead-lettering it; beyond the horizon the event is refused naming
event_time. Raw retention 400 days and a 365-day horizon, as a history load is configured."""

from __future__ import annotations

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
from eventpipe.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from eventpipe.stack.components import KafkaBroker
from google.rpc import code_pb2

from tests.conftest import Isolation, StartService
from tests.integration.ingest.conftest import IngestUnderTest, read_topic, start_ingest
from tests.integration.ingest.events import now_micros
from tests.integration.store.conftest import FAST_STORE_ENV, stored_event_cells

DAY_MICROS = 86_400 * 1_000_000
RETENTION = {
    "EVENTPIPE_RAW_RETENTION_DAYS": "400",
    "EVENTPIPE_BACKFILL_HORIZON_DAYS": "365",
}


@dataclass
class Keys:
    """The test's signing key and JWKS: ingest verifies the tokens minted here."""

    private_key: bytes
    jwks: Path

    def metadata(self, tenant_id: str, *scopes: str) -> list[tuple[str, str]]:
        token = mint_token(self.private_key, self.jwks, tenant_id=tenant_id, scopes=scopes)
        return [("authorization", f"Bearer {token}")]

    def env(self) -> dict[str, str]:
        return {"EVENTPIPE_AUTH_JWKS_FILE": str(self.jwks), **RETENTION}


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    private_path, jwks = generate_local_keys(tmp_path_factory.mktemp("auth"))
    return Keys(private_path.read_bytes(), jwks)


@pytest.fixture(scope="module")
def ingest(run_dir: Path, kafka_broker: KafkaBroker, keys: Keys) -> Iterator[IngestUnderTest]:
    """Ingest with auth on, for the tests that need no store."""
    running = start_ingest(run_dir, kafka_broker, Isolation.new(), env=keys.env())
    yield running
    running.service.stop()


def old_event(event_id: str, days_old: float) -> event_pb2.Event:
    event = event_pb2.Event(event_id=event_id, event_type="purchase", entity_id="user-1")
    event.event_time.CopyFrom(timestamp_from_micros(now_micros() - int(days_old * DAY_MICROS)))
    event.attributes["amount"].double_value = 12.5
    return event


def ingest_events(
    address: str,
    metadata: list[tuple[str, str]],
    tenant_id: str,
    events: list[event_pb2.Event],
    *,
    backfill: bool,
) -> ingest_pb2.IngestEventsResponse:
    with grpc.insecure_channel(address) as channel:
        reply: ingest_pb2.IngestEventsResponse = ingest_pb2_grpc.IngestServiceStub(
            channel
        ).IngestEvents(
            ingest_pb2.IngestEventsRequest(tenant_id=tenant_id, events=events, backfill=backfill),
            metadata=metadata,
            timeout=30,
        )
        return reply


def test_an_admin_backfill_of_a_200_day_old_event_is_acknowledged_marked_and_stored(
    start_service: StartService,
    common_settings: CommonSettings,
    isolation: Isolation,
    keys: Keys,
) -> None:
    start_service("store", env={**FAST_STORE_ENV, **RETENTION}, timeout=90)
    service = start_service("ingest", env=keys.env())
    tenant = isolation.tenant_id
    reply = ingest_events(
        service.address,
        keys.metadata(tenant, "ingest", "admin"),
        tenant,
        [old_event("hist-200", 200)],
        backfill=True,
    )
    assert [r.status for r in reply.results] == [results_pb2.ITEM_STATUS_ACCEPTED]
    (message,) = read_topic(common_settings, 1, key_prefix=f"{tenant}#".encode())
    assert (HEADER_BACKFILL, b"1") in (message.headers() or [])
    wait_until(
        lambda: "hist-200" in stored_event_cells(common_settings),
        timeout=60,
        what="the backfilled event stored by the store consumer",
    )


def ingest_one(
    ingest: IngestUnderTest, keys: Keys, event: event_pb2.Event, *scopes: str, backfill: bool
) -> ingest_pb2.IngestEventsResponse:
    return ingest_events(
        ingest.address,
        keys.metadata(ingest.tenant_id, *scopes),
        ingest.tenant_id,
        [event],
        backfill=backfill,
    )


def test_a_backfill_without_the_admin_scope_is_permission_denied(
    ingest: IngestUnderTest, keys: Keys
) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        ingest_one(ingest, keys, old_event("hist-denied", 200), "ingest", backfill=True)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED


@pytest.mark.parametrize(
    ("days_old", "backfill", "reason"),
    [
        (200, False, "is older than the retention of 30 days"),
        (370, True, "is older than the backfill horizon of 365 days"),
    ],
    ids=["an old event without backfill", "a backfill beyond the horizon"],
)
def test_an_event_older_than_its_window_is_refused_naming_event_time(
    ingest: IngestUnderTest, keys: Keys, days_old: int, backfill: bool, reason: str
) -> None:
    event = old_event(f"hist-{days_old}-{backfill}", days_old)
    reply = ingest_one(ingest, keys, event, "ingest", "admin", backfill=backfill)
    (result,) = reply.results
    assert result.status == results_pb2.ITEM_STATUS_REJECTED
    assert result.code == code_pb2.INVALID_ARGUMENT
    assert [(v.field, v.description) for v in result.violations] == [("event_time", reason)]
