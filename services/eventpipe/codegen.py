"""The one code-generation step: Python stubs (.py, _grpc.py, .pyi) and the Envoy descriptor set.

Run as ``python -m eventpipe.codegen`` (``make protos``). Generated files are not committed;
setup builds them, so they can never be stale in a checkout.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

from grpc_tools import protoc

REPO_ROOT = Path(__file__).resolve().parents[2]
PROTO_ROOT = REPO_ROOT / "protos"
PYTHON_OUT = REPO_ROOT / "services"
BUILD_DIR = REPO_ROOT / ".build"
DESCRIPTOR_SET = BUILD_DIR / "descriptors" / "eventpipe.pb"
# googleapis protos copied here so that buf (which cannot reach the Buf Schema Registry)
# resolves google/api and google/rpc imports as a second, un-linted module.
THIRD_PARTY_PROTOS = BUILD_DIR / "third_party" / "protos"
GOOGLEAPIS_FILES = (
    "google/api/annotations.proto",
    "google/api/http.proto",
    "google/rpc/status.proto",
    "google/rpc/error_details.proto",
    "google/rpc/code.proto",
)
GENERATED_PACKAGES = ("common", "ingest", "store", "enrich", "query")


def _googleapis_root() -> Path:
    # google.api is a namespace package without __file__; locate a module inside it.
    spec = importlib.util.find_spec("google.api.annotations_pb2")
    if spec is None or spec.origin is None:
        raise SystemExit("googleapis-common-protos is not installed; run `make setup`")
    return Path(spec.origin).parents[2]


def _well_known_root() -> Path:
    return Path(protoc.__file__).parent / "_proto"


def generate() -> list[Path]:
    """Generates all stubs and the descriptor set; returns the proto files compiled."""
    protos = sorted(PROTO_ROOT.rglob("*.proto"))
    if not protos:
        raise SystemExit(f"no .proto files under {PROTO_ROOT}")
    for package in GENERATED_PACKAGES:
        shutil.rmtree(PYTHON_OUT / "eventpipe" / package / "v1", ignore_errors=True)
    DESCRIPTOR_SET.parent.mkdir(parents=True, exist_ok=True)

    googleapis = _googleapis_root()
    includes = [f"-I{PROTO_ROOT}", f"-I{googleapis}", f"-I{_well_known_root()}"]
    relative = [str(p.relative_to(PROTO_ROOT)) for p in protos]
    stubs = [
        "grpc_tools.protoc",
        *includes,
        f"--python_out={PYTHON_OUT}",
        f"--pyi_out={PYTHON_OUT}",
        f"--grpc_python_out={PYTHON_OUT}",
        *relative,
    ]
    descriptors = [
        "grpc_tools.protoc",
        *includes,
        "--include_imports",
        "--include_source_info",
        f"--descriptor_set_out={DESCRIPTOR_SET}",
        *relative,
        # google.rpc types go into the descriptor set so Envoy can render error details as JSON.
        "google/rpc/status.proto",
        "google/rpc/error_details.proto",
    ]
    for args in (stubs, descriptors):
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")

    for name in GOOGLEAPIS_FILES:
        target = THIRD_PARTY_PROTOS / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(googleapis / name, target)
    return protos


def main() -> None:
    protos = generate()
    print(f"generated stubs for {len(protos)} proto files; descriptor set {DESCRIPTOR_SET}")


if __name__ == "__main__":
    main()
