"""The one code-generation step: Python stubs (.py, _grpc.py, .pyi), the Envoy descriptor set, and
the REST reference: an OpenAPI document and the docs page Envoy serves (docs/edge.md).

Run as ``python -m eventpipe.codegen`` (``make protos``). Generated files are not committed;
setup builds them, so they can never be stale in a checkout. The OpenAPI step needs two tools
``make setup`` installs (``eventpipe stack install``): protoc-gen-openapiv2 and swagger-ui-dist.
"""

from __future__ import annotations

import base64
import importlib
import importlib.util
import json
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from grpc_tools import protoc

from eventpipe.stack import install

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
    "google/api/field_behavior.proto",
    "google/api/http.proto",
    "google/rpc/status.proto",
    "google/rpc/error_details.proto",
    "google/rpc/code.proto",
)
GENERATED_PACKAGES = ("common", "ingest", "store", "enrich", "query")
# The Envoy Lua filter that refuses unknown JSON body fields, with the schema inlined.
BODY_FILTER_SOURCE = REPO_ROOT / "envoy" / "reject_unknown_fields.lua"
BODY_FILTER = BUILD_DIR / "envoy" / "reject_unknown_fields.lua"
# The REST reference Envoy serves without a token: the document at /openapi.json and a Swagger UI
# page at /docs, its script and styles inlined so that the page needs no other path or network.
OPENAPI_DOCUMENT = BUILD_DIR / "envoy" / "openapi.json"
DOCS_PAGE_SOURCE = REPO_ROOT / "envoy" / "docs.html"
DOCS_PAGE = BUILD_DIR / "envoy" / "docs.html"
OPENAPI_TITLE = "EventPipe REST API"
# The security scheme every operation declares: the JWT Envoy and the services check.
BEARER_SCHEME = "bearer"
BEARER_DESCRIPTION = (
    "A JWT (RS256) with the tenant_id and scope claims the service needs (ingest, query, admin), "
    "sent as `Authorization: Bearer <token>`; locally `eventpipe auth token --tenant T "
    "--scope ingest,query`. Type the whole header value, `Bearer ` included."
)
ERROR_DESCRIPTION = (
    "Every error, from a service or from Envoy itself: a google.rpc.Status as JSON, with the "
    "gRPC code, a message, and details such as google.rpc.BadRequest field violations or "
    "RetryInfo. docs/edge.md lists the HTTP status of each code."
)


def _tool(name: str) -> Path:
    """An installed tool's path; SystemExit naming `make setup` when it is missing."""
    try:
        path: Path = install.tool_path(name)
    except install.InstallError:
        raise SystemExit(
            f"{name} is not installed: run `make setup` (or `eventpipe stack install {name}`)"
        ) from None
    return path


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
    for package in GENERATED_PACKAGES:
        # Regular packages, not namespace ones, so that import-linter sees the stubs' layer.
        package_dir = PYTHON_OUT / "eventpipe" / package
        for folder in (package_dir, package_dir / "v1"):
            (folder / "__init__.py").write_text('"""Generated by `make protos`; do not edit."""\n')

    write_body_filter(DESCRIPTOR_SET, BODY_FILTER)
    write_openapi_document(includes, relative, OPENAPI_DOCUMENT)
    write_docs_page(DOCS_PAGE)

    for name in GOOGLEAPIS_FILES:
        target = THIRD_PARTY_PROTOS / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(googleapis / name, target)
    return protos


def _lua_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _lua_path_pattern(template: str) -> str:
    """``/v1/tenants/{tenant_id}/events:batch`` -> ``^/v1/tenants/[^/]+/events:batch$``."""
    parts = re.split(r"(\{[^}]*\})", template)
    pattern = "".join(
        (".+" if "**" in part else "[^/]+")
        if part.startswith("{")
        else re.sub(r"([%^$().\[\]*+\-?])", r"%\1", part)
        for part in parts
    )
    return f"^{pattern}$"


def write_body_filter(descriptor_set: Path, target: Path) -> None:
    """Inlines the REST body schema (routes and message fields) into the Envoy Lua filter."""
    from google.api import annotations_pb2
    from google.protobuf import descriptor_pb2, descriptor_pool

    files = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set.read_bytes())
    pool = descriptor_pool.DescriptorPool()
    for file in files.file:
        pool.Add(file)
    messages: dict[str, str] = {}

    def child_of(field: Any) -> str:
        message = field.message_type
        if message is None or message.full_name.startswith("google.protobuf."):
            return "false"  # a scalar, or a well-known type written as a JSON scalar
        if message.GetOptions().map_entry:
            return "{__map = " + child_of(message.fields_by_name["value"]) + "}"
        add(message)
        return _lua_string(message.full_name)

    def add(message: Any) -> None:
        if message.full_name in messages:
            return
        messages[message.full_name] = ""  # placeholder first: messages may recurse
        entries = []
        for field in message.fields:
            child = child_of(field)
            for name in sorted({field.name, field.json_name}):
                entries.append(f"[{_lua_string(name)}] = {child}")
        messages[message.full_name] = "{" + ", ".join(entries) + "}"

    routes = []
    for file in files.file:
        if not file.package.startswith("eventpipe."):
            continue
        for service in pool.FindFileByName(file.name).services_by_name.values():
            for method in service.methods:
                rule = method.GetOptions().Extensions[annotations_pb2.http]
                verb = rule.WhichOneof("pattern")
                if not rule.body or verb not in ("post", "put", "patch"):
                    continue
                request = method.input_type
                root = (
                    request if rule.body == "*" else request.fields_by_name[rule.body].message_type
                )
                if root is None:
                    raise SystemExit(f"{method.full_name}: body {rule.body!r} is not a message")
                add(root)
                routes.append(
                    f"  {{{_lua_string(verb.upper())}, "
                    f"{_lua_string(_lua_path_pattern(getattr(rule, verb)))}, "
                    f"{_lua_string(root.full_name)}}},"
                )
    schema = "\n".join(
        [
            "-- Generated by `make protos` from the descriptor set; do not edit.",
            "ROUTES = {",
            *routes,
            "}",
            "MESSAGES = {",
            *(f"  [{_lua_string(name)}] = {body}," for name, body in sorted(messages.items())),
            "}",
        ]
    )
    source = BODY_FILTER_SOURCE.read_text().replace("-- @GENERATED_SCHEMA@", schema)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(source)


def write_openapi_document(includes: list[str], protos: list[str], target: Path) -> None:
    """One OpenAPI (Swagger 2.0) document for every google.api.http rule, by protoc-gen-openapiv2.

    Field names are the proto names, as Envoy's transcoder prints them
    (``preserve_proto_field_names``); the comments become descriptions; every operation requires
    the bearer JWT and documents the JSON error shape as its default response.
    """
    plugin = _tool("protoc-gen-openapiv2")
    # The protos declare no go_package; the plugin wants a Go import path for each file.
    go_packages = ",".join(f"M{name}={Path(name).parent}" for name in protos)
    options = (
        f"allow_merge=true,merge_file_name=eventpipe,json_names_for_fields=false,{go_packages}"
    )
    with tempfile.TemporaryDirectory() as out:
        args = [
            "grpc_tools.protoc",
            *includes,
            f"--plugin=protoc-gen-openapiv2={plugin}",
            f"--openapiv2_out={out}",
            f"--openapiv2_opt={options}",
            *protos,
        ]
        if protoc.main(args) != 0:
            raise SystemExit("protoc-gen-openapiv2 failed")
        document = json.loads((Path(out) / "eventpipe.swagger.json").read_text())
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(describe_api(document), indent=2) + "\n")


def describe_api(document: dict[str, Any]) -> dict[str, Any]:
    """What the generator cannot take from the protos: title, auth scheme, error shape."""
    document["info"] = {
        "title": OPENAPI_TITLE,
        "version": "v1",
        "description": (
            "Event ingestion and enrichment, REST through Envoy (each operation is also a gRPC "
            "method on the same address). Every operation needs a bearer JWT."
        ),
    }
    document["securityDefinitions"] = {
        BEARER_SCHEME: {
            "type": "apiKey",
            "name": "Authorization",
            "in": "header",
            "description": BEARER_DESCRIPTION,
        }
    }
    document["security"] = [{BEARER_SCHEME: []}]
    status = document["definitions"]["rpcStatus"]
    status["description"] = ERROR_DESCRIPTION
    status["required"] = ["code", "message"]
    for operations in document["paths"].values():
        for operation in operations.values():
            operation["responses"]["default"]["description"] = "An error (google.rpc.Status)."
    return document


def write_docs_page(target: Path) -> None:
    """The Swagger UI page of envoy/docs.html, with swagger-ui-dist's script and styles inlined as
    data URLs (no escaping pitfalls of inline script text), reading ``openapi.json`` beside it."""
    swagger_ui = _tool("swagger-ui")

    def data_url(name: str, media_type: str) -> str:
        encoded = base64.b64encode((swagger_ui / name).read_bytes()).decode()
        return f"data:{media_type};base64,{encoded}"

    page = (
        DOCS_PAGE_SOURCE.read_text()
        .replace("@SWAGGER_UI_CSS@", data_url("swagger-ui.css", "text/css"))
        .replace("@SWAGGER_UI_BUNDLE@", data_url("swagger-ui-bundle.js", "text/javascript"))
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(page)


def main() -> None:
    protos = generate()
    print(
        f"generated stubs for {len(protos)} proto files; descriptor set {DESCRIPTOR_SET}; "
        f"REST reference {OPENAPI_DOCUMENT} and {DOCS_PAGE}"
    )


if __name__ == "__main__":
    main()
