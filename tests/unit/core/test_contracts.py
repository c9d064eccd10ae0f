"""The protobuf contracts: versioned packages, REST mappings, field behaviors, and a clean
`buf lint`."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from eventpipe.codegen import DESCRIPTOR_SET
from eventpipe.common.v1 import event_pb2, results_pb2
from eventpipe.enrich.v1 import enrich_pb2
from eventpipe.ingest.v1 import ingest_pb2
from eventpipe.query.v1 import query_pb2
from eventpipe.stack.install import tool_path
from eventpipe.store.v1 import store_pb2
from google.api import annotations_pb2, field_behavior_pb2
from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor

REPO = Path(__file__).resolve().parents[3]
SERVICES = [
    ingest_pb2.DESCRIPTOR.services_by_name["IngestService"],
    store_pb2.DESCRIPTOR.services_by_name["StoreService"],
    enrich_pb2.DESCRIPTOR.services_by_name["EnrichService"],
    query_pb2.DESCRIPTOR.services_by_name["QueryService"],
]
STREAMING_ONLY = {"eventpipe.ingest.v1.IngestService.StreamEvents"}


def test_each_service_sits_in_its_own_versioned_package() -> None:
    assert [s.full_name for s in SERVICES] == [
        "eventpipe.ingest.v1.IngestService",
        "eventpipe.store.v1.StoreService",
        "eventpipe.enrich.v1.EnrichService",
        "eventpipe.query.v1.QueryService",
    ]


@pytest.mark.parametrize("method", [m for s in SERVICES for m in s.methods], ids=lambda m: m.name)
def test_every_unary_rpc_declares_its_rest_mapping(method) -> None:  # type: ignore[no-untyped-def]
    rule = method.GetOptions().Extensions[annotations_pb2.http]
    if method.full_name in STREAMING_ONLY:
        assert not rule.WhichOneof("pattern")
    else:
        assert rule.WhichOneof("pattern") in {"get", "post", "put", "patch", "delete"}


def _behaviors(field: FieldDescriptor) -> set[int]:
    return set(field.GetOptions().Extensions[field_behavior_pb2.field_behavior])


def _request_fields(message: Descriptor, seen: set[str]) -> Iterator[FieldDescriptor]:
    """The fields a client may send: those of the request and of the messages it carries,
    except inside output-only fields, map entries, oneofs and google's own types."""
    if message.full_name in seen or message.full_name.startswith("google."):
        return
    seen.add(message.full_name)
    for field in message.fields:
        if field.containing_oneof is not None:
            continue
        yield field
        child = field.message_type
        if child is None or field_behavior_pb2.OUTPUT_ONLY in _behaviors(field):
            continue
        if child.GetOptions().map_entry:
            child = child.fields_by_name["value"].message_type
            if child is None:
                continue
        yield from _request_fields(child, seen)


REQUEST_FIELDS = sorted(
    {
        field.full_name: field
        for service in SERVICES
        for method in service.methods
        for field in _request_fields(method.input_type, set())
    }.items()
)


@pytest.mark.parametrize(("name", "field"), REQUEST_FIELDS, ids=[n for n, _ in REQUEST_FIELDS])
def test_every_field_a_client_sends_says_whether_it_is_required(  # type: ignore[no-untyped-def]
    name, field
) -> None:
    declared = _behaviors(field) & {
        field_behavior_pb2.REQUIRED,
        field_behavior_pb2.OPTIONAL,
        field_behavior_pb2.OUTPUT_ONLY,
    }
    assert len(declared) == 1, f"{name}: {sorted(declared)}"


@pytest.mark.parametrize("method", [m for s in SERVICES for m in s.methods], ids=lambda m: m.name)
def test_every_path_variable_is_a_required_field(method) -> None:  # type: ignore[no-untyped-def]
    rule = method.GetOptions().Extensions[annotations_pb2.http]
    verb = rule.WhichOneof("pattern")
    variables = re.findall(r"\{([^}=]+)", getattr(rule, verb)) if verb else []
    for variable in variables:
        field = method.input_type.fields_by_name[variable]
        assert field_behavior_pb2.REQUIRED in _behaviors(field), f"{method.name}: {variable}"


def _leading_comments() -> dict[str, str]:
    """Field full name -> its leading comment, from the descriptor set codegen builds."""
    files = descriptor_pb2.FileDescriptorSet.FromString(DESCRIPTOR_SET.read_bytes())
    comments: dict[str, str] = {}
    for file in files.file:
        if not file.package.startswith("eventpipe."):
            continue
        for location in file.source_code_info.location:
            path = list(location.path)
            # 4 = message_type, 2 = field (top-level messages only: the protos nest none).
            if len(path) == 4 and path[0] == 4 and path[2] == 2:
                message = file.message_type[path[1]]
                field = message.field[path[3]]
                name = f"{file.package}.{message.name}.{field.name}"
                comments[name] = location.leading_comments
    return comments


def test_a_field_is_output_only_exactly_when_its_comment_says_the_server_sets_it() -> None:
    said = {
        name
        for name, comment in _leading_comments().items()
        if re.search(r"(set|assigned) by the server", comment)
    }
    marked = {
        field.full_name
        for module in (event_pb2, results_pb2, ingest_pb2, store_pb2, enrich_pb2, query_pb2)
        for message in module.DESCRIPTOR.message_types_by_name.values()
        for field in message.fields
        if field_behavior_pb2.OUTPUT_ONLY in _behaviors(field)
    }
    assert said == marked
    assert "eventpipe.common.v1.Event.ingest_time" in marked


def _buf(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(tool_path("buf")), *args], cwd=REPO, capture_output=True, text=True, timeout=120
    )


def test_buf_lint_is_clean() -> None:
    result = _buf("lint")
    assert result.returncode == 0, result.stdout + result.stderr


def test_buf_format_has_nothing_to_change() -> None:
    result = _buf("format", "-d", "--exit-code")
    assert result.returncode == 0, result.stdout + result.stderr
