"""The REST reference through the real Envoy of the stack with auth on (``auth_stack``): the
OpenAPI document `make protos` builds at /openapi.json and the Swagger UI page at /docs, both
without a token (and nothing else without one), and the page as a reader sees it: headless
Chromium (Debian's package) renders it, every operation of the document is listed, and its
screenshot is docs/img/rest-docs.png, the picture the README shows.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
from eventpipe.codegen import DESCRIPTOR_SET, OPENAPI_DOCUMENT, REPO_ROOT
from eventpipe.stack.stack import Stack, dev_token
from google.api import annotations_pb2
from google.protobuf import descriptor_pb2, descriptor_pool

from tests.conftest import install_or_fail
from tests.helpers.events import new_tenant
from tests.helpers.http import Reply, http

SCREENSHOT = REPO_ROOT / "docs" / "img" / "rest-docs.png"
HTTP_VERBS = ("get", "put", "post", "delete", "patch")
OPERATION_BLOCK = re.compile(
    r'<div class="opblock opblock-\w+" id="operations-(\w+)-(\w+)">.*?'
    r'opblock-summary-method">(\w+)</span>.*?data-path="([^"]+)"'
)
# docs/edge.md: the flags Chromium needs on these machines (no sandbox as root, no GPU, and no
# background connections, which the closed network refuses).
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    # Virtual time runs only while nothing loads: the page's script and its fetch of
    # /openapi.json finish before the DOM is dumped or the picture taken.
    "--virtual-time-budget=20000",
)


def get(stack: Stack, path: str, *, method: str = "GET", token: str | None = None) -> Reply:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    return http(f"{stack.envoy.base_url}{path}", method=method, headers=headers)


def operations(document: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    """{(METHOD, path template): operation} of an OpenAPI (Swagger 2.0) document."""
    return {
        (verb.upper(), path): operation
        for path, item in document["paths"].items()
        for verb, operation in item.items()
        if verb in HTTP_VERBS
    }


def http_rules() -> set[tuple[str, str]]:
    """(METHOD, path template) of every google.api.http rule in the descriptor set."""
    files = descriptor_pb2.FileDescriptorSet.FromString(DESCRIPTOR_SET.read_bytes())
    pool = descriptor_pool.DescriptorPool()
    for file in files.file:
        pool.Add(file)
    rules = set()
    for file in files.file:
        if not file.package.startswith("eventpipe."):
            continue
        for service in pool.FindFileByName(file.name).services_by_name.values():
            for method in service.methods:
                if not method.GetOptions().HasExtension(annotations_pb2.http):
                    continue
                rule = method.GetOptions().Extensions[annotations_pb2.http]
                verb = rule.WhichOneof("pattern")
                rules.add((verb.upper(), getattr(rule, verb)))
    return rules


def chromium(*args: str, user_data_dir: Path) -> str:
    install_or_fail("chromium")
    from eventpipe.stack.install import tool_path

    result = subprocess.run(
        [str(tool_path("chromium")), *CHROMIUM_FLAGS, f"--user-data-dir={user_data_dir}", *args],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_the_openapi_document_is_served_without_a_token(auth_stack: Stack) -> None:
    reply = get(auth_stack, "/openapi.json")

    assert reply.status == 200, reply.text
    assert reply.content_type == "application/json"
    assert reply.json() == json.loads(OPENAPI_DOCUMENT.read_text())


def test_the_document_has_one_operation_per_rest_rule_of_the_protos(auth_stack: Stack) -> None:
    document = get(auth_stack, "/openapi.json").json()

    assert set(operations(document)) == http_rules()


def test_every_operation_is_described_and_requires_the_bearer_jwt(auth_stack: Stack) -> None:
    document = get(auth_stack, "/openapi.json").json()

    (scheme,) = document["securityDefinitions"].values()
    assert (scheme["type"], scheme["in"], scheme["name"]) == ("apiKey", "header", "Authorization")
    assert document["security"] == [{name: []} for name in document["securityDefinitions"]]
    for key, operation in operations(document).items():
        # The proto comment of the RPC, e.g. "GetEntity returns an entity's profile; ...".
        assert operation["summary"].split()[0] == operation["operationId"].split("_")[1], key
        assert operation.get("security", document["security"]) == document["security"], key
        error = operation["responses"]["default"]["schema"]["$ref"]
        assert error == "#/definitions/rpcStatus", key
    assert document["definitions"]["rpcStatus"]["required"] == ["code", "message"]


def test_the_docs_page_is_served_without_a_token_and_loads_nothing_from_elsewhere(
    auth_stack: Stack,
) -> None:
    reply = get(auth_stack, "/docs")

    assert reply.status == 200
    assert reply.content_type == "text/html; charset=utf-8"
    page = reply.text
    assert "SwaggerUIBundle(" in page
    # Script and styles are inlined: no address other than the document beside the page.
    assert "http://" not in page.split("<body>")[1].split("<script")[0]
    assert 'src="data:text/javascript;base64,' in page
    assert 'href="data:text/css;base64,' in page


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/docs/"),
        ("GET", "/docs/swagger-ui.css"),
        ("GET", "/openapi.json/x"),
        ("GET", "/openapi.jsonx"),
        ("GET", "/openapi"),
        ("POST", "/docs"),
        ("DELETE", "/openapi.json"),
    ],
)
def test_nothing_but_reading_the_two_reference_paths_is_open_without_a_token(
    auth_stack: Stack, method: str, path: str
) -> None:
    reply = get(auth_stack, path, method=method)

    assert reply.status == 401, reply.text
    assert reply.json() == {"code": 16, "message": "missing or invalid token", "details": []}


@pytest.mark.parametrize("path", ["/docs/", "/openapi.jsonx", "/docs.html"])
def test_a_path_near_a_reference_path_is_no_such_path_even_with_a_token(
    auth_stack: Stack, path: str
) -> None:
    token = dev_token(auth_stack.config, new_tenant("reference"), ["query"])
    reply = get(auth_stack, path, token=token)

    assert reply.status == 404, reply.text
    assert reply.json()["code"] == 5


def test_a_query_string_does_not_change_what_the_reference_paths_serve(
    auth_stack: Stack,
) -> None:
    assert get(auth_stack, "/openapi.json?v=1").json() == get(auth_stack, "/openapi.json").json()
    assert get(auth_stack, "/docs?x=1").text == get(auth_stack, "/docs").text


def test_the_docs_page_lists_every_operation_in_headless_chromium(
    auth_stack: Stack, tmp_path: Path
) -> None:
    document = get(auth_stack, "/openapi.json").json()
    url = f"{auth_stack.envoy.base_url}/docs"

    dom = chromium("--dump-dom", url, user_data_dir=tmp_path / "dom-profile")

    assert document["info"]["title"] in dom
    # Swagger UI renders each operation as a block (id "operations-<tag>-<operationId>") whose
    # summary shows the HTTP method and the path.
    listed = {
        (tag, operation_id): (method, path)
        for tag, operation_id, method, path in OPERATION_BLOCK.findall(dom)
    }
    assert listed == {
        (operation["tags"][0], operation["operationId"]): key
        for key, operation in operations(document).items()
    }
    assert "Authorize" in dom, "the bearer scheme gives the page its Authorize button"

    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    chromium(
        f"--screenshot={SCREENSHOT}",
        "--window-size=1280,1800",
        url,
        user_data_dir=tmp_path / "screenshot-profile",
    )
    assert SCREENSHOT.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
