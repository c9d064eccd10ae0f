"""TLS at the edge (``EVENTPIPE_EDGE_TLS=true``, ``eventpipe stack up --tls``): the real Envoy,
rendered with TLS on its listener and the local self-signed certificate, in front of the
recording gRPC server of test_envoy_transcoding.py. A client that trusts the certificate talks
HTTPS (REST and Envoy's own routes) and gRPC over TLS; plain HTTP and an untrusting client get
nothing. The prod rendering's TLS (the envoy-tls Secret's files) is checked by a real Envoy too.
"""

from __future__ import annotations

import http.client
import ssl
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import yaml
from eventpipe.query.v1 import query_pb2, query_pb2_grpc
from eventpipe.stack import edge_k8s
from eventpipe.stack.components import Envoy
from eventpipe.stack.edge import EdgeSettings, local_certificate

from tests.helpers.envoy import envoy_validate
from tests.integration.test_envoy_transcoding import QUERY, RecordingUpstream, recording_edge

SECRET_MOUNT = "/etc/envoy/tls"


@pytest.fixture(scope="module")
def upstream() -> RecordingUpstream:
    return RecordingUpstream()


@pytest.fixture(scope="module")
def tls_edge(
    upstream: RecordingUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Envoy]:
    settings = EdgeSettings(tls=True)  # type: ignore[call-arg]
    with recording_edge(upstream, tmp_path_factory.mktemp("tls-edge-run"), settings) as envoy:
        yield envoy


def trusting_context() -> ssl.SSLContext:
    certificate, _ = local_certificate()
    return ssl.create_default_context(cafile=str(certificate))


def https_get(envoy: Envoy, path: str, context: ssl.SSLContext) -> tuple[int, bytes]:
    connection = http.client.HTTPSConnection("localhost", envoy.port, timeout=30, context=context)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def test_envoy_answers_https_with_the_local_certificate(tls_edge: Envoy) -> None:
    status, body = https_get(tls_edge, "/healthz", trusting_context())

    assert status == 200, body


def test_a_rest_call_over_https_reaches_the_service(
    tls_edge: Envoy, upstream: RecordingUpstream
) -> None:
    tenant = f"tls-{uuid.uuid4().hex[:8]}"
    status, body = https_get(tls_edge, f"/v1/tenants/{tenant}/entities/e1", trusting_context())

    assert status == 200, body
    assert [c for c in upstream.calls_to(f"{QUERY}/GetEntity") if c.request.tenant_id == tenant]  # type: ignore[attr-defined]


@pytest.mark.parametrize("target", ["localhost", "127.0.0.1"])
def test_a_grpc_call_over_tls_reaches_the_service(
    tls_edge: Envoy, upstream: RecordingUpstream, target: str
) -> None:
    certificate, _ = local_certificate()
    credentials = grpc.ssl_channel_credentials(root_certificates=certificate.read_bytes())
    tenant = f"tls-grpc-{uuid.uuid4().hex[:8]}"
    with grpc.secure_channel(f"{target}:{tls_edge.port}", credentials) as channel:
        query_pb2_grpc.QueryServiceStub(channel).GetEntity(
            query_pb2.GetEntityRequest(tenant_id=tenant, entity_id="e1"), timeout=10
        )

    assert [c for c in upstream.calls_to(f"{QUERY}/GetEntity") if c.request.tenant_id == tenant]  # type: ignore[attr-defined]


def test_plain_http_to_the_tls_listener_gets_no_answer(tls_edge: Envoy) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", tls_edge.port, timeout=30)
    try:
        with pytest.raises((http.client.HTTPException, ConnectionError)):
            connection.request("GET", "/healthz")
            connection.getresponse().read()
    finally:
        connection.close()


def test_a_client_that_does_not_trust_the_certificate_is_refused_the_handshake(
    tls_edge: Envoy,
) -> None:
    with pytest.raises(ssl.SSLCertVerificationError):
        https_get(tls_edge, "/healthz", ssl.create_default_context())


def test_the_prod_rendering_terminates_tls_with_the_secret_files_and_envoy_accepts_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(edge_k8s, "PROD_TLS", True)
    config = edge_k8s.render_kubernetes_config(with_auth=True)
    listener = yaml.safe_load(config)["static_resources"]["listeners"][0]
    tls = listener["filter_chains"][0]["transport_socket"]["typed_config"]["common_tls_context"]

    assert tls["tls_certificates"] == [
        {
            "certificate_chain": {"filename": f"{SECRET_MOUNT}/tls.crt"},
            "private_key": {"filename": f"{SECRET_MOUNT}/tls.key"},
        }
    ]
    assert tls["alpn_protocols"] == ["h2", "http/1.1"], "gRPC needs h2 by ALPN"
    # As the mounted Secret would hold them.
    local_certificate(tmp_path / "tls")
    envoy_validate(config.replace(SECRET_MOUNT, str(tmp_path / "tls")), tmp_path)
