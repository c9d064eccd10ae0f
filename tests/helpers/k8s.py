"""The kustomize overlays under k8s/, rendered offline for the manifest tests.

``kubectl kustomize`` when kubectl is on PATH, else the kustomize ``make setup`` builds from its
Go module (eventpipe.stack.install). Neither being there is a broken setup: the test fails and
says so, it never skips.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from eventpipe.stack import install

REPO_ROOT = Path(__file__).resolve().parents[2]
OVERLAYS_DIR = REPO_ROOT / "k8s" / "overlays"


def kustomize(overlay: str) -> str:
    """The YAML stream ``k8s/overlays/<overlay>`` renders to."""
    return kustomize_directory(OVERLAYS_DIR / overlay)


def kustomize_directory(directory: Path) -> str:
    """The YAML stream of any kustomization (a test's own, combining overlays and components)."""
    overlay = directory.name
    try:
        command = install.kustomize_command()
    except install.InstallError as exc:
        pytest.fail(
            f"cannot render k8s/overlays/{overlay}: neither kubectl nor kustomize is installed "
            f"({exc}); `make setup` installs kustomize",
            pytrace=False,
        )
    result = subprocess.run(
        [*command, str(directory)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"{' '.join(command)} {overlay} failed:\n{result.stderr}"
    return result.stdout


def rendered_objects(overlay: str) -> list[dict[str, Any]]:
    """The Kubernetes objects of an overlay."""
    return [doc for doc in yaml.safe_load_all(kustomize(overlay)) if doc]


def rendered_kustomization(directory: Path) -> list[dict[str, Any]]:
    """The Kubernetes objects of a kustomization directory."""
    return [doc for doc in yaml.safe_load_all(kustomize_directory(directory)) if doc]


def rendered_envoy_config(overlay: str) -> str:
    """The envoy.yaml that an overlay's envoy-config ConfigMap carries."""
    for obj in rendered_objects(overlay):
        if obj["kind"] == "ConfigMap" and obj["metadata"]["name"].startswith("envoy-"):
            return obj["data"]["envoy.yaml"]  # type: ignore[no-any-return]
    raise AssertionError(f"{overlay} renders no envoy-config ConfigMap")
