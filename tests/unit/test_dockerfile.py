"""The Dockerfile's envoy image bakes in every file the Kubernetes Envoy config reads."""

from __future__ import annotations

import re
from pathlib import Path

from eventpipe.stack import edge_k8s, install

DOCKERFILE = Path(__file__).resolve().parents[2] / "Dockerfile"


def _stage(name: str) -> str:
    text = DOCKERFILE.read_text()
    match = re.search(rf"^FROM \S+ AS {name}\n(.*?)(?=^FROM |\Z)", text, re.M | re.S)
    assert match, f"no stage {name} in the Dockerfile"
    return match.group(1)


def test_the_envoy_image_copies_every_file_its_kubernetes_config_reads() -> None:
    copied = set(re.findall(r"^COPY --from=builder \S+ (\S+)$", _stage("envoy"), re.M))
    assert set(edge_k8s.image_files()) <= copied


def test_the_image_builds_the_code_generation_tools_at_the_pinned_versions() -> None:
    text = DOCKERFILE.read_text()
    assert f"protoc-gen-openapiv2@{install.OPENAPIV2_VERSION}" in text
    assert f"swagger-ui-dist@{install.SWAGGER_UI_VERSION}" in text
    assert f"protoc-gen-openapiv2-{install.OPENAPIV2_VERSION}/" in text
    assert f"swagger-ui-{install.SWAGGER_UI_VERSION}/" in text
