"""Auth under abuse, on real processes: a stalled identity provider blocks neither health
checks nor calls with known tokens; RPCs that span tenants need the operator scope, through
Envoy (403) and straight to the service; a date claim that is not a number is refused by the
service exactly as by Envoy."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest
from eventpipe.core.auth import generate_local_keys, mint_token
from eventpipe.core.waiting import wait_until
from eventpipe.ingest.v1 import ingest_pb2
from eventpipe.stack.components import SERVICE_NAMES, Envoy, GrpcService, KafkaBroker
from eventpipe.stack.edge import EdgeAuth
from eventpipe.stack.probes import free_port
from eventpipe.store.v1 import store_pb2, store_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.conftest import Isolation, start_or_fail
from tests.helpers.http import http
from tests.integration.ingest.conftest import IngestUnderTest, start_ingest
from tests.integration.ingest.events import valid_event

pytestmark = [pytest.mark.abuse]

PROMPT = 5.0  # a generous deadline: "answered", not "fast"


@dataclass(frozen=True)
class Keys:
    private_pem: bytes
    jwks_path: Path

    @property
    def kid(self) -> str:
        return str(json.loads(self.jwks_path.read_text())["keys"][0]["kid"])

    def token(self, tenant: str | None, scopes: list[str]) -> str:
        return mint_token(self.private_pem, self.jwks_path, tenant_id=tenant, scopes=scopes)

    def signed(self, **claims: Any) -> str:
        """A token with exactly these claims besides iss, aud and sub, signed by the key."""
        body = {"iss": "eventpipe-local", "aud": "eventpipe", "sub": "abuse", **claims}
        return jwt.encode(body, self.private_pem, algorithm="RS256", headers={"kid": self.kid})


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    private_path, jwks_path = generate_local_keys(tmp_path_factory.mktemp("auth"))
    return Keys(private_path.read_bytes(), jwks_path)


def _bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


# ---------------------------------------------------------------- a stalled identity provider


class IdentityProvider:
    """A tiny JWKS endpoint that answers until ``stall()``, then holds every request open."""

    def __init__(self, jwks: bytes) -> None:
        self.jwks = jwks
        self.stalled = threading.Event()
        self.released = threading.Event()
        self.stalled_requests = 0
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if provider.stalled.is_set():
                    provider.stalled_requests += 1
                    provider.released.wait(120)
                    return
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(provider.jwks)))
                self.end_headers()
                self.wfile.write(provider.jwks)

            def log_message(self, *_args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/jwks.json"

    def stall(self) -> None:
        self.stalled.set()

    def close(self) -> None:
        self.released.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def identity_provider(keys: Keys) -> Iterator[IdentityProvider]:
    provider = IdentityProvider(keys.jwks_path.read_bytes())
    yield provider
    provider.close()


@pytest.fixture
def ingest_on_remote_jwks(
    run_dir: Path, kafka_broker: KafkaBroker, identity_provider: IdentityProvider
) -> Iterator[IngestUnderTest]:
    running = start_ingest(
        run_dir,
        kafka_broker,
        Isolation.new(),
        env={
            "EVENTPIPE_AUTH_JWKS_URL": identity_provider.url,
            # A fetch may hang far longer than any call's deadline: nothing may wait for it.
            "EVENTPIPE_AUTH_JWKS_FETCH_TIMEOUT_SECONDS": "60",
            "EVENTPIPE_AUTH_JWKS_REFRESH_SECONDS": "1",
            "EVENTPIPE_AUTH_JWKS_RETRY_SECONDS": "1",
        },
    )
    yield running
    running.service.stop()


def _ingest(ingest: IngestUnderTest, token: str, event_id: str) -> grpc.StatusCode:
    with ingest.channel() as channel:
        try:
            ingest.stub(channel).IngestEvents(
                ingest_pb2.IngestEventsRequest(tenant_id="acme", events=[valid_event(event_id)]),
                metadata=_bearer(token),
                timeout=PROMPT,
            )
        except grpc.RpcError as error:
            return error.code()
    return grpc.StatusCode.OK


def _health(ingest: IngestUnderTest) -> int:
    with grpc.insecure_channel(ingest.address) as channel:
        response = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=PROMPT
        )
    return int(response.status)


def test_a_stalled_jwks_server_blocks_neither_health_checks_nor_calls_with_known_keys(
    ingest_on_remote_jwks: IngestUnderTest, identity_provider: IdentityProvider, keys: Keys
) -> None:
    ingest = ingest_on_remote_jwks
    cached = keys.token("acme", ["ingest"])
    assert _ingest(ingest, cached, "before-stall") == grpc.StatusCode.OK

    identity_provider.stall()
    wait_until(
        lambda: identity_provider.stalled_requests >= 1,
        timeout=30,
        what="a JWKS fetch hanging on the stalled provider",
    )

    # Tokens naming a key the provider never published each ask for a fetch; none may wait.
    unknown_kid = jwt.encode(
        {"iss": "eventpipe-local", "aud": "eventpipe", "exp": int(time.time()) + 600},
        keys.private_pem,
        algorithm="RS256",
        headers={"kid": "rotated-in-later"},
    )
    calls: dict[str, Callable[[], object]] = {
        "health": lambda: _health(ingest),
        "cached token": lambda: _ingest(ingest, cached, "cached"),
        "new token, known key": lambda: _ingest(ingest, keys.token("acme", ["ingest"]), "fresh"),
        **{
            f"unknown key {i}": (lambda: _ingest(ingest, unknown_kid, "unknown")) for i in range(24)
        },
    }
    with futures.ThreadPoolExecutor(len(calls)) as pool:
        answers = {name: pool.submit(call) for name, call in calls.items()}
        results = {name: answer.result(timeout=60) for name, answer in answers.items()}

    assert results.pop("health") == health_pb2.HealthCheckResponse.SERVING
    assert results.pop("cached token") == grpc.StatusCode.OK
    # The last good keys stay in use while the provider hangs.
    assert results.pop("new token, known key") == grpc.StatusCode.OK
    assert set(results.values()) == {grpc.StatusCode.UNAUTHENTICATED}
    assert identity_provider.stalled.is_set()


# ---------------------------------------------------------------- operator scope, claim types


@dataclass
class StoreBehindEnvoy:
    store: GrpcService
    envoy: Envoy

    def rest_status(self, token: str) -> int:
        url = f"{self.envoy.base_url}/v1/store/consumerStatus"
        return http(url, headers={"authorization": f"Bearer {token}"}, timeout=10).status

    def grpc_status(self, token: str) -> grpc.StatusCode:
        with grpc.insecure_channel(self.store.address) as channel:
            try:
                store_pb2_grpc.StoreServiceStub(channel).GetConsumerStatus(
                    store_pb2.GetConsumerStatusRequest(), metadata=_bearer(token), timeout=10
                )
            except grpc.RpcError as error:
                return error.code()
        return grpc.StatusCode.OK


@pytest.fixture
def store_behind_envoy(
    start_service: Callable[..., GrpcService], common_settings: object, run_dir: Path, keys: Keys
) -> Iterator[StoreBehindEnvoy]:
    store = start_service(
        "store", env={"EVENTPIPE_AUTH_JWKS_FILE": str(keys.jwks_path)}, timeout=90
    )
    upstreams = {name: free_port() for name in SERVICE_NAMES} | {"store": store.port}
    envoy = Envoy(
        run_dir,
        port=free_port(),
        admin_port=free_port(),
        upstream_ports=upstreams,
        name=f"envoy-operator-{store.port}",
        auth=EdgeAuth(jwks_file=keys.jwks_path),
    )
    start_or_fail(envoy)
    yield StoreBehindEnvoy(store, envoy)
    envoy.stop()


def test_consumer_status_spans_tenants_so_only_an_operator_token_reads_it(
    store_behind_envoy: StoreBehindEnvoy, keys: Keys
) -> None:
    admin = keys.token("acme", ["ingest", "query", "admin"])
    operator = keys.token(None, ["operator"])

    assert store_behind_envoy.rest_status(admin) == 403
    assert store_behind_envoy.grpc_status(admin) == grpc.StatusCode.PERMISSION_DENIED
    assert store_behind_envoy.rest_status(operator) == 200
    assert store_behind_envoy.grpc_status(operator) == grpc.StatusCode.OK


def test_an_operator_token_reaches_no_tenants_data(
    store_behind_envoy: StoreBehindEnvoy, keys: Keys
) -> None:
    operator = _bearer(keys.token(None, ["operator", "admin"]))
    request = store_pb2.GetDimensionRecordRequest(tenant_id="acme", dimension="users", key="u1")
    with (
        grpc.insecure_channel(store_behind_envoy.store.address) as channel,
        pytest.raises(grpc.RpcError) as refused,
    ):
        store_pb2_grpc.StoreServiceStub(channel).GetDimensionRecord(
            request, metadata=operator, timeout=10
        )
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED


@pytest.mark.parametrize(
    ("claim", "value"),
    [
        ("exp", "numeric string"),
        ("nbf", "numeric string"),
        ("iat", "numeric string"),
        ("exp", "boolean"),
    ],
)
def test_a_date_claim_that_is_not_a_number_is_refused_by_envoy_and_by_the_service_alike(
    store_behind_envoy: StoreBehindEnvoy, keys: Keys, claim: str, value: str
) -> None:
    now = int(time.time())
    claims: dict[str, Any] = {"exp": now + 600, "iat": now, "nbf": now - 60}
    claims[claim] = str(claims[claim]) if value == "numeric string" else True
    token = keys.signed(scope="operator", **claims)

    assert store_behind_envoy.rest_status(token) == 401
    assert store_behind_envoy.grpc_status(token) == grpc.StatusCode.UNAUTHENTICATED


def test_fractional_dates_are_accepted_by_envoy_and_by_the_service_alike(
    store_behind_envoy: StoreBehindEnvoy, keys: Keys
) -> None:
    now = time.time()
    token = keys.signed(scope="operator", exp=now + 600.5, iat=now, nbf=now - 60.25)

    assert store_behind_envoy.rest_status(token) == 200
    assert store_behind_envoy.grpc_status(token) == grpc.StatusCode.OK
