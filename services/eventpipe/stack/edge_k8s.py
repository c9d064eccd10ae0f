"""The Kubernetes Envoy configs, rendered from the one edge template (envoy/envoy.yaml).

``k8s/base/envoy/envoy.yaml`` (no authentication at the edge) and
``k8s/components/jwt-authn/envoy.yaml`` (the prod overlay: the same plus ``jwt_authn`` on the
identity provider's remote JWKS, CORS for the prod overlay's ``EVENTPIPE_EDGE_CORS_ORIGINS``
only, and with ``PROD_TLS`` TLS with the certificate of the envoy-tls Secret mounted at
/etc/envoy/tls) are this module's output, committed because kustomize cannot run it;
tests/unit/test_k8s_manifests.py proves the committed files equal the rendering. After a change
to envoy/envoy.yaml, envoy/jwt_authn.yaml, envoy/kubernetes.yaml or the edge's defaults, run
``python -m eventpipe.stack.edge_k8s`` and commit what it writes.

The settings are ``EdgeSettings``' defaults (never the environment of whoever renders) with
``KUBERNETES_OVERRIDES``; the identity provider is the prod overlay's ``EVENTPIPE_AUTH_*``, which
the services read too.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from string import Template
from typing import Any
from urllib.parse import urlsplit

import yaml

from eventpipe.codegen import BODY_FILTER, DESCRIPTOR_SET, DOCS_PAGE, OPENAPI_DOCUMENT
from eventpipe.stack.edge import (
    ENVOY_TEMPLATE,
    REPO_ROOT,
    SERVICE_NAMES,
    EdgeSettings,
    dump_config,
    fill_template,
    jwt_authn_filter,
    place_jwt_authn,
    set_body_filter_source,
    template_values,
    terminate_tls,
)

KUBERNETES_PARTS = REPO_ROOT / "envoy" / "kubernetes.yaml"
BASE_CONFIG = REPO_ROOT / "k8s" / "base" / "envoy" / "envoy.yaml"
PROD_CONFIG = REPO_ROOT / "k8s" / "components" / "jwt-authn" / "envoy.yaml"
PROD_KUSTOMIZATION = REPO_ROOT / "k8s" / "overlays" / "prod" / "kustomization.yaml"
# In a cluster a unary call gets less time than locally: clients retry on another pod.
KUBERNETES_OVERRIDES: Mapping[str, Any] = {"route_timeout": "30s"}
# TLS on the prod listener (the envoy-tls Secret at /etc/envoy/tls, envoy/kubernetes.yaml); the
# prod overlay's Envoy probes speak HTTPS to match (k8s/overlays/prod/edge-tls.yaml).
PROD_TLS = True


def kubernetes_settings(**overrides: Any) -> EdgeSettings:
    """EdgeSettings' defaults with ``KUBERNETES_OVERRIDES`` (and ``overrides``); every field is
    given, so the environment of the machine that renders plays no part."""
    defaults = {name: field.default for name, field in EdgeSettings.model_fields.items()}
    return EdgeSettings(**{**defaults, **KUBERNETES_OVERRIDES, **overrides})


def prod_settings(kustomization: Path = PROD_KUSTOMIZATION) -> EdgeSettings:
    """The prod edge: CORS for the origins of the prod overlay's ``EVENTPIPE_EDGE_CORS_ORIGINS``
    only, and TLS on the public listener (``PROD_TLS``)."""
    origins = _common_literals(kustomization)["EVENTPIPE_EDGE_CORS_ORIGINS"]
    return kubernetes_settings(tls=PROD_TLS, cors_origins=origins)


def _common_literals(kustomization: Path) -> dict[str, str]:
    """The literals of the prod overlay's eventpipe-common ConfigMap."""
    document = yaml.safe_load(kustomization.read_text())
    (common,) = [g for g in document["configMapGenerator"] if g["name"] == "eventpipe-common"]
    return dict(literal.split("=", 1) for literal in common["literals"])


def prod_identity_provider(kustomization: Path = PROD_KUSTOMIZATION) -> dict[str, str]:
    """``EVENTPIPE_AUTH_{JWKS_URL,ISSUER,AUDIENCE}`` of the prod overlay's eventpipe-common."""
    literals = _common_literals(kustomization)
    return {key: literals[f"EVENTPIPE_AUTH_{key}"] for key in ("JWKS_URL", "ISSUER", "AUDIENCE")}


def render_kubernetes_config(*, with_auth: bool) -> str:
    """The base config, or with ``with_auth`` the prod one: jwt_authn, TLS with the certificate
    of the envoy-tls Secret, CORS for the configured origins only."""
    provider = prod_identity_provider()
    jwks_host = urlsplit(provider["JWKS_URL"]).hostname or ""
    parts = yaml.safe_load(
        Template(KUBERNETES_PARTS.read_text()).substitute(
            JWKS_URL=provider["JWKS_URL"], JWKS_HOST=jwks_host
        )
    )
    settings = prod_settings() if with_auth else kubernetes_settings()
    values = {
        **template_values(settings),
        "LISTEN_ADDRESS": parts["listen_address"],
        "LISTEN_PORT": str(parts["listen_port"]),
        "ADMIN_PORT": str(parts["admin_port"]),
        "DESCRIPTOR_SET": parts["descriptor_set"],
        "OPENAPI_DOCUMENT": parts["openapi_document"],
        "DOCS_PAGE": parts["docs_page"],
        "ACCESS_LOG_PATH": "/dev/stdout",
        **{f"{name.upper()}_HOST": name for name in SERVICE_NAMES},
        **{f"{name.upper()}_PORT": str(parts["service_ports"][name]) for name in SERVICE_NAMES},
    }
    config = fill_template(ENVOY_TEMPLATE, values)
    listener = config["static_resources"]["listeners"][0]
    manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
    for logger in manager["access_log"]:
        log_format = logger["typed_config"]["log_format"]
        logger.clear()
        logger.update(parts["access_logger"])
        logger["typed_config"]["log_format"] = log_format
    set_body_filter_source(config, parts["body_filter"])
    jwt_authn = None
    if with_auth:
        jwt_authn = jwt_authn_filter(
            issuer=provider["ISSUER"],
            audience=provider["AUDIENCE"],
            jwks_source={"remote_jwks": parts["remote_jwks"]},
        )
    place_jwt_authn(config, jwt_authn)
    if settings.tls:
        terminate_tls(config, **parts["tls_certificate"])
    config["static_resources"]["listeners"].extend(parts["listeners"])
    clusters = config["static_resources"]["clusters"]
    config["static_resources"]["clusters"] = [
        _service_cluster(cluster, parts["service_cluster"]) for cluster in clusters
    ] + parts["clusters"]
    if with_auth:
        config["static_resources"]["clusters"].append(parts["jwks_cluster"])
    target = PROD_CONFIG if with_auth else BASE_CONFIG
    header = (
        f"# {target.relative_to(REPO_ROOT)}: rendered from envoy/{ENVOY_TEMPLATE.name}, "
        f"envoy/{KUBERNETES_PARTS.name}{' and envoy/jwt_authn.yaml' if with_auth else ''}\n"
        "# by `python -m eventpipe.stack.edge_k8s`; do not edit (docs/edge.md).\n"
    )
    return dump_config(config, header)


def _service_cluster(cluster: Mapping[str, Any], discovery: Mapping[str, Any]) -> dict[str, Any]:
    """A template cluster (``type: STATIC``) made a DNS cluster with health checks."""
    rest = {key: value for key, value in cluster.items() if key not in ("name", "type")}
    return {"name": cluster["name"], **discovery, **rest}


def image_files() -> dict[str, Path]:
    """The files the eventpipe-envoy image bakes in (the Dockerfile's ``envoy`` target), each
    with the build output of `make protos` it copies: a local Envoy checks a Kubernetes config
    with these in their place."""
    parts = yaml.safe_load(KUBERNETES_PARTS.read_text())
    return {
        parts["descriptor_set"]: DESCRIPTOR_SET,
        parts["body_filter"]["filename"]: BODY_FILTER,
        parts["openapi_document"]: OPENAPI_DOCUMENT,
        parts["docs_page"]: DOCS_PAGE,
    }


def rendered_files() -> dict[Path, str]:
    return {
        BASE_CONFIG: render_kubernetes_config(with_auth=False),
        PROD_CONFIG: render_kubernetes_config(with_auth=True),
    }


def main() -> None:
    for path, text in rendered_files().items():
        path.write_text(text)
        print(f"wrote {path.relative_to(REPO_ROOT)}")


if __name__ == "__main__":
    main()
