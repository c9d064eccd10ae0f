"""Idle StreamEvents calls cannot exhaust ingest: streams run on threads of their own, open
streams are capped per tenant, per connection and per server (RESOURCE_EXHAUSTED beyond), and
an idle stream is closed after the idle timeout. Real ingest processes, auth on."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from eventpipe.common.v1 import results_pb2
from eventpipe.core.auth import generate_local_keys, mint_token
from eventpipe.core.waiting import wait_until
from eventpipe.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from eventpipe.stack import probes
from eventpipe.stack.components import KafkaBroker

from tests.conftest import Isolation
from tests.helpers.http import metric_values
from tests.integration.ingest.conftest import IngestUnderTest, start_ingest
from tests.integration.ingest.events import valid_event

pytestmark = [pytest.mark.abuse]

# More idle streams than the 16 unary workers, and each limit reachable with a few more.
MAX_STREAMS = 48
PER_TENANT = 40
PER_CONNECTION = 44
IDLE_TIMEOUT_SECONDS = 2


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, Path]:
    private_path, jwks_path = generate_local_keys(tmp_path_factory.mktemp("auth"))
    return private_path.read_bytes(), jwks_path


def _token(keys: tuple[bytes, Path], tenant: str) -> list[tuple[str, str]]:
    token = mint_token(keys[0], keys[1], tenant_id=tenant, scopes=["ingest"])
    return [("authorization", f"Bearer {token}")]


StartIngest = Callable[[dict[str, str]], IngestUnderTest]


@pytest.fixture
def start_authed_ingest(
    run_dir: Path, kafka_broker: KafkaBroker, keys: tuple[bytes, Path]
) -> Iterator[StartIngest]:
    """Starts ingest processes with auth on and the given settings; stops them at the end."""
    started: list[IngestUnderTest] = []

    def start(env: dict[str, str]) -> IngestUnderTest:
        auth = {"EVENTPIPE_AUTH_JWKS_FILE": str(keys[1])}
        started.append(start_ingest(run_dir, kafka_broker, Isolation.new(), env={**auth, **env}))
        return started[-1]

    yield start
    for running in started:
        running.service.stop()


@pytest.fixture
def capped_ingest(start_authed_ingest: StartIngest) -> IngestUnderTest:
    return start_authed_ingest(
        {
            "EVENTPIPE_INGEST_MAX_STREAMS": str(MAX_STREAMS),
            "EVENTPIPE_INGEST_MAX_STREAMS_PER_TENANT": str(PER_TENANT),
            "EVENTPIPE_INGEST_MAX_STREAMS_PER_CONNECTION": str(PER_CONNECTION),
            "EVENTPIPE_INGEST_STREAM_IDLE_TIMEOUT_SECONDS": "600",
        }
    )


@pytest.fixture
def impatient_ingest(start_authed_ingest: StartIngest) -> IngestUnderTest:
    return start_authed_ingest(
        {
            "EVENTPIPE_INGEST_MAX_STREAMS_PER_TENANT": "1",
            "EVENTPIPE_INGEST_STREAM_IDLE_TIMEOUT_SECONDS": str(IDLE_TIMEOUT_SECONDS),
        }
    )


class IdleStreams:
    """StreamEvents calls that send nothing until ``close``."""

    def __init__(self) -> None:
        self._closed = threading.Event()
        self.calls: list[grpc.Future] = []

    def _nothing(self) -> Iterator[ingest_pb2.StreamEventsRequest]:
        self._closed.wait()
        yield from ()

    def open(
        self, channel: grpc.Channel, metadata: list[tuple[str, str]], count: int
    ) -> list[grpc.Future]:
        stub = ingest_pb2_grpc.IngestServiceStub(channel)
        opened = [
            stub.StreamEvents(self._nothing(), metadata=metadata, timeout=300) for _ in range(count)
        ]
        self.calls.extend(opened)
        return opened

    def close(self) -> None:
        self._closed.set()
        for call in self.calls:
            call.cancel()


@pytest.fixture
def idle_streams() -> Iterator[IdleStreams]:
    streams = IdleStreams()
    yield streams
    streams.close()


def _connection(ingest: IngestUnderTest) -> grpc.Channel:
    # A channel of its own connection: grpc shares connections between equal channels otherwise.
    return grpc.insecure_channel(ingest.address, options=[("grpc.use_local_subchannel_pool", 1)])


def _open_streams(ingest: IngestUnderTest) -> float:
    values = metric_values(ingest.metrics_port)
    assert "eventpipe_streams_open" in values, "eventpipe_streams_open is not exported"
    return values["eventpipe_streams_open"]


def _refused(calls: list[grpc.Future]) -> list[grpc.Future]:
    return [call for call in calls if call.done()]


def _expect_refusals(
    ingest: IngestUnderTest, calls: list[grpc.Future], refused: int, open_after: int
) -> list[str]:
    """Waits until ``refused`` of ``calls`` ended and the server holds ``open_after`` streams;
    returns the refusals' messages, after checking that each is RESOURCE_EXHAUSTED."""
    wait_until(
        lambda: len(_refused(calls)) == refused and _open_streams(ingest) == open_after,
        timeout=60,
        what=f"{refused} refused streams and {open_after} open ones",
    )
    ended = _refused(calls)
    assert len(ended) == refused
    assert [call.code() for call in ended] == [grpc.StatusCode.RESOURCE_EXHAUSTED] * refused
    return [call.details() for call in ended]


def test_forty_idle_streams_of_one_tenant_leave_other_tenants_served_and_over_cap_streams_refused(
    capped_ingest: IngestUnderTest, keys: tuple[bytes, Path], idle_streams: IdleStreams
) -> None:
    ingest = capped_ingest
    hog, other = _token(keys, "hog"), _token(keys, "other")
    with (
        _connection(ingest) as hog_channel,
        _connection(ingest) as second,
        ingest.channel() as third,
    ):
        first = idle_streams.open(hog_channel, hog, PER_TENANT)
        wait_until(
            lambda: _open_streams(ingest) == PER_TENANT,
            timeout=60,
            what=f"{PER_TENANT} idle streams open",
        )
        assert not _refused(first)

        # More idle streams than unary workers are open: another tenant's call is answered.
        response = ingest.stub(third).IngestEvents(
            ingest_pb2.IngestEventsRequest(
                tenant_id="other", events=[valid_event("e-1"), valid_event("e-2")]
            ),
            metadata=other,
            timeout=5,
        )
        assert [r.status for r in response.results] == [results_pb2.ITEM_STATUS_ACCEPTED] * 2
        assert probes.grpc_health(ingest.address) == "SERVING"

        over_tenant = idle_streams.open(hog_channel, hog, 1)
        (message,) = _expect_refusals(ingest, over_tenant, refused=1, open_after=PER_TENANT)
        assert "tenant" in message

        room = PER_CONNECTION - PER_TENANT
        over_connection = idle_streams.open(hog_channel, other, room + 1)
        (message,) = _expect_refusals(ingest, over_connection, refused=1, open_after=PER_CONNECTION)
        assert "connection" in message

        room = MAX_STREAMS - PER_CONNECTION
        over_server = idle_streams.open(second, other, room + 1)
        (message,) = _expect_refusals(ingest, over_server, refused=1, open_after=MAX_STREAMS)
        assert "server" in message
        assert not _refused(first)

        # Still answered with every stream slot taken.
        response = ingest.stub(third).IngestEvents(
            ingest_pb2.IngestEventsRequest(tenant_id="other", events=[valid_event("e-3")]),
            metadata=other,
            timeout=5,
        )
        assert response.summary.accepted_count == 1


def test_an_idle_stream_is_closed_after_the_idle_timeout_and_frees_its_slot(
    impatient_ingest: IngestUnderTest, keys: tuple[bytes, Path], idle_streams: IdleStreams
) -> None:
    ingest = impatient_ingest
    tenant = _token(keys, "acme")
    batches: queue.Queue[ingest_pb2.StreamEventsRequest | None] = queue.Queue()
    batches.put(
        ingest_pb2.StreamEventsRequest(
            batch_id="b1", tenant_id="acme", events=[valid_event("idle-1")]
        )
    )
    with ingest.channel() as channel:
        stub = ingest.stub(channel)
        stream = stub.StreamEvents(iter(batches.get, None), metadata=tenant, timeout=120)
        try:
            first = next(stream)
            assert first.batch_id == "b1" and first.summary.accepted_count == 1

            # The tenant's only slot is taken while the stream lives.
            (refused,) = idle_streams.open(channel, tenant, 1)
            with pytest.raises(grpc.RpcError) as over_cap:
                next(refused)
            assert over_cap.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

            # Nothing more is sent: the server ends the stream, well before its deadline.
            with pytest.raises(grpc.RpcError) as idle:
                next(stream)
            assert idle.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "without a batch" in (idle.value.details() or "")
        finally:
            batches.put(None)

        wait_until(lambda: _open_streams(ingest) == 0, timeout=30, what="the slot freed")
        again = stub.StreamEvents(
            iter([ingest_pb2.StreamEventsRequest(batch_id="b2", tenant_id="acme")]),
            metadata=tenant,
            timeout=30,
        )
        # Admitted now; the empty batch is answered (rejected as a whole), then the stream ends.
        (answer,) = list(again)
        assert answer.batch_id == "b2"

        # A stream that never sends a batch is closed the same way.
        (silent,) = idle_streams.open(channel, _token(keys, "beta"), 1)
        with pytest.raises(grpc.RpcError) as never_sent:
            next(silent)
        assert never_sent.value.code() == grpc.StatusCode.UNAVAILABLE


def test_on_sigterm_idle_streams_end_at_once_instead_of_holding_the_shutdown(
    capped_ingest: IngestUnderTest, keys: tuple[bytes, Path], idle_streams: IdleStreams
) -> None:
    ingest = capped_ingest
    with _connection(ingest) as channel:
        calls = idle_streams.open(channel, _token(keys, "acme"), 3)
        wait_until(lambda: _open_streams(ingest) == 3, timeout=60, what="3 idle streams open")

        stopper = threading.Thread(target=ingest.service.stop, daemon=True)
        stopper.start()
        wait_until(
            lambda: all(call.done() for call in calls), timeout=60, what="the streams to end"
        )
        stopper.join(60)

    assert {call.code() for call in calls} == {grpc.StatusCode.UNAVAILABLE}
    assert all("shutting down" in (call.details() or "") for call in calls)
