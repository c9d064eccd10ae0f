"""Backfill: an admin's history load through IngestEvents, judged against the backfill horizon
and marked on the raw topic; refused without the admin scope; the horizon checked against the
raw and enriched retention at start-up."""

from __future__ import annotations

from datetime import timedelta

import pytest
from eventpipe.common.v1 import event_pb2, results_pb2
from eventpipe.core.auth import Principal
from eventpipe.core.config import ConfigError, load_settings
from eventpipe.core.errors import PermissionDenied
from eventpipe.core.storage.times import timestamp_from_micros
from eventpipe.core.validation import EventLimits
from eventpipe.ingest.v1 import ingest_pb2
from ingest import servicer as servicer_module
from ingest.capacity import InFlightLimiter
from ingest.config import IngestSettings
from ingest.pipeline import IngestPipeline
from ingest.servicer import IngestServicer

from tests.unit.ingest.test_pipeline import NOW, FakeLog

DAY = 86_400_000_000


class FakeContext:
    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return ()


def servicer(log: FakeLog) -> IngestServicer:
    pipeline = IngestPipeline(
        log,
        InFlightLimiter(1000, 10 * 1024 * 1024),
        limits=EventLimits(max_age=timedelta(days=30), backfill_horizon=timedelta(days=365)),
        max_batch_bytes=4 * 1024 * 1024,
        produce_timeout_seconds=0.5,
        retry_after_seconds=1.0,
        clock_micros=lambda: NOW,
    )
    return IngestServicer(pipeline, stream_window=2, stream_capacity_wait=0.0)


def request(days_old: int, *, backfill: bool) -> ingest_pb2.IngestEventsRequest:
    event = event_pb2.Event(event_id=f"old-{days_old}", event_type="purchase", entity_id="u1")
    event.event_time.CopyFrom(timestamp_from_micros(NOW - days_old * DAY))
    return ingest_pb2.IngestEventsRequest(tenant_id="acme", events=[event], backfill=backfill)


def as_caller(monkeypatch: pytest.MonkeyPatch, *scopes: str) -> None:
    principal = Principal(subject="loader", tenant_id="acme", scopes=frozenset(scopes))
    monkeypatch.setattr(servicer_module, "current_principal", lambda: principal)


def test_an_admin_backfill_of_an_old_event_is_accepted_and_marked_on_the_topic(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    as_caller(monkeypatch, "ingest", "admin")
    log = FakeLog()
    reply = servicer(log).IngestEvents(request(200, backfill=True), FakeContext())  # type: ignore[arg-type]
    assert [r.status for r in reply.results] == [results_pb2.ITEM_STATUS_ACCEPTED]
    assert ("eventpipe-backfill", b"1") in log.headers[0]


def test_a_backfill_without_the_admin_scope_is_permission_denied_and_writes_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    as_caller(monkeypatch, "ingest")
    log = FakeLog()
    with pytest.raises(PermissionDenied, match="backfill needs the admin scope"):
        servicer(log).IngestEvents(request(1, backfill=True), FakeContext())  # type: ignore[arg-type]
    assert log.written == []


def test_without_backfill_an_old_event_is_refused_naming_event_time_even_for_an_admin(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    as_caller(monkeypatch, "ingest", "admin")
    log = FakeLog()
    reply = servicer(log).IngestEvents(request(200, backfill=False), FakeContext())  # type: ignore[arg-type]
    (result,) = reply.results
    assert result.status == results_pb2.ITEM_STATUS_REJECTED
    assert [v.field for v in result.violations] == ["event_time"]
    assert log.headers == []


def test_a_backfill_beyond_the_horizon_is_refused_naming_event_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    as_caller(monkeypatch, "ingest", "admin")
    reply = servicer(FakeLog()).IngestEvents(request(400, backfill=True), FakeContext())  # type: ignore[arg-type]
    (result,) = reply.results
    assert [(v.field, v.description) for v in result.violations] == [
        ("event_time", "is older than the backfill horizon of 365 days")
    ]


def test_with_auth_off_a_backfill_is_allowed_as_every_scope_is() -> None:
    log = FakeLog()
    reply = servicer(log).IngestEvents(request(200, backfill=True), FakeContext())  # type: ignore[arg-type]
    assert reply.summary.accepted_count == 1


def test_the_horizon_defaults_to_the_raw_retention(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVENTPIPE_RAW_RETENTION_DAYS", "90")
    assert load_settings(IngestSettings).event_limits().backfill_horizon == timedelta(days=90)


def test_the_horizon_is_one_variable_for_every_service(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVENTPIPE_RAW_RETENTION_DAYS", "400")
    monkeypatch.setenv("EVENTPIPE_BACKFILL_HORIZON_DAYS", "365")
    assert load_settings(IngestSettings).event_limits().backfill_horizon == timedelta(days=365)


@pytest.mark.parametrize(
    ("raw_days", "enriched_days", "named"),
    [
        ("30", "400", "EVENTPIPE_RAW_RETENTION_DAYS=30"),
        ("400", "200", "EVENTPIPE_ENRICHED_RETENTION_DAYS=200"),
    ],
)
def test_start_up_fails_when_the_horizon_outlives_a_tables_gc_rule(
    monkeypatch: pytest.MonkeyPatch, raw_days: str, enriched_days: str, named: str
) -> None:
    monkeypatch.setenv("EVENTPIPE_RAW_RETENTION_DAYS", raw_days)
    monkeypatch.setenv("EVENTPIPE_ENRICHED_RETENTION_DAYS", enriched_days)
    monkeypatch.setenv("EVENTPIPE_BACKFILL_HORIZON_DAYS", "365")
    with pytest.raises(ConfigError) as refused:
        load_settings(IngestSettings)
    assert "EVENTPIPE_BACKFILL_HORIZON_DAYS=365 exceeds " + named in str(refused.value)


def test_an_unset_horizon_never_outlives_the_enriched_retention(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("EVENTPIPE_RAW_RETENTION_DAYS", "500")
    monkeypatch.setenv("EVENTPIPE_ENRICHED_RETENTION_DAYS", "400")
    assert load_settings(IngestSettings).event_limits().backfill_horizon == timedelta(days=400)
