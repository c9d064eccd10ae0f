"""What a newcomer types, run as they would type it: the lines `make up` prints, `make bench`,
and `make up` a second time (the demo data loaded again), against the stack the fixtures start
as `eventpipe stack up` does (JWT auth on).
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from eventpipe.core import bigtable as core_bigtable
from eventpipe.core import bigtable_rows
from eventpipe.core.config import CommonSettings
from eventpipe.core.storage.attributes import decode_int
from eventpipe.core.storage.keys import (
    dimension_prefix,
    entity_prefix,
    prefix_end,
    row_key_for_profile,
)
from eventpipe.core.storage.rows import PROFILE_EVENT_COUNT_QUALIFIER
from eventpipe.core.storage.tables import (
    DIMENSIONS_TABLE,
    ENTITY_PROFILES_TABLE,
    META_FAMILY,
    RAW_EVENTS_TABLE,
)
from eventpipe.core.waiting import wait_until
from eventpipe.demo.generator import DemoSpec, generate
from eventpipe.stack.components import REPO_ROOT
from eventpipe.stack.demo import load_demo_data
from eventpipe.stack.stack import TRY_HEADER, Stack

# Small enough that a load (ingest, store, one Spark batch job) takes seconds, not minutes.
SMALL_DEMO = DemoSpec(users=4, products=3, sessions=10, days=1, seed=11)


def printed_commands(endpoints: str) -> list[str]:
    """The indented lines under the "Try" header of what `make up` prints."""
    lines = endpoints.splitlines()
    commands = []
    for line in lines[lines.index(TRY_HEADER) + 1 :]:
        if not line.startswith("  "):
            break
        commands.append(line[2:])
    return commands


class PastedShell:
    """Runs pasted lines one at a time as one interactive shell would: what a line sets (the
    token, the event time) is there for the next line."""

    def __init__(self, folder: Path) -> None:
        self.env = {key: value for key, value in os.environ.items() if key != "TOKEN"}
        self._state = folder / "shell-env"

    def run(self, line: str) -> subprocess.CompletedProcess[str]:
        script = f'set -a\n{line}\nstatus=$?\nenv -0 > "{self._state}"\nexit $status\n'
        result = subprocess.run(
            ["bash", "-c", script], env=self.env, capture_output=True, text=True, timeout=60
        )
        variables = self._state.read_text().split("\0")
        self.env = dict(v.split("=", 1) for v in variables if "=" in v)
        return result


def _answer(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    """The JSON a curl line printed; an error body ({"code", "message"}) fails the test."""
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert isinstance(document, dict)
    assert "code" not in document, document
    return document


@pytest.fixture(scope="module")
def demo_stack(auth_stack: Stack) -> Stack:
    """The stack after `make up`: the demo tenant holds the (small) demo set, enriched."""
    load_demo_data(auth_stack.config, spec=SMALL_DEMO)
    return auth_stack


def test_the_commands_make_up_prints_take_one_event_through_ingest_to_its_raw_row(
    demo_stack: Stack, tmp_path: Path
) -> None:
    commands = printed_commands(demo_stack.endpoints())
    assert any("event_time" in c for c in commands)
    shell = PastedShell(tmp_path)
    answers = []

    for line in commands:
        if not line.startswith("curl "):
            result = shell.run(line)
            assert result.returncode == 0, (line, result.stderr)
        elif "EVENT_VIEW_RAW" in line:
            event_id = f"try-{shell.env['EVENT_TIME']}"
            # The store writes the row within about a second of the ack: repeat the line as
            # the printed help says. Once a second, within the edge's per-tenant rate.
            wait_until(
                lambda line=line, event_id=event_id: event_id in shell.run(line).stdout,
                timeout=60,
                interval=1.0,
                what=f"{event_id} in the raw events of user-00001",
            )
            answers.append(_answer(shell.run(line)))
        else:
            answers.append(_answer(shell.run(line)))

    ack, raw_page, profile = answers
    assert ack["result"]["id"] == event_id
    assert event_id in [e["event"]["event_id"] for e in raw_page["events"]]
    assert profile["profile"]["entity_id"] == "user-00001"
    assert int(profile["profile"]["event_count"]) >= 1


# ---------------------------------------------------------------- `make up` twice


def _snapshot(stack: Stack, tenant: str) -> dict[str, Any]:
    """Per demo user: raw event rows, dimension versions, and the profile's event count."""
    config = stack.config
    assert config.table_prefix is not None
    client = bigtable_rows.gapic_client()

    def path(table: str) -> str:
        return bigtable_rows.table_path(
            config.bigtable_project, config.bigtable_instance, config.table_prefix + table
        )

    def rows(table: str, prefix: bytes) -> int:
        ranges = [(prefix, prefix_end(prefix))]
        return sum(1 for _ in bigtable_rows.read_rows(client, path(table), ranges=ranges))

    users = [f"user-{n:05d}" for n in range(1, SMALL_DEMO.users + 1)]
    products = [f"sku-{n:05d}" for n in range(1, SMALL_DEMO.products + 1)]
    profiles = {
        key: cells
        for key, cells in bigtable_rows.read_rows(
            client,
            path(ENTITY_PROFILES_TABLE),
            keys=[row_key_for_profile(tenant, u) for u in users],
        )
    }
    try:
        return {
            "raw": {u: rows(RAW_EVENTS_TABLE, entity_prefix(tenant, u)) for u in users},
            "dimension versions": {
                **{u: rows(DIMENSIONS_TABLE, dimension_prefix(tenant, "users", u)) for u in users},
                **{
                    p: rows(DIMENSIONS_TABLE, dimension_prefix(tenant, "products", p))
                    for p in products
                },
            },
            "profile event_count": {
                u: decode_int(cells[(META_FAMILY, PROFILE_EVENT_COUNT_QUALIFIER)])
                for u in users
                if (cells := profiles.get(row_key_for_profile(tenant, u)))
            },
        }
    finally:
        client.transport.close()


def test_loading_the_demo_data_a_second_time_changes_no_event_dimension_or_profile(
    auth_stack: Stack,
) -> None:
    tenant = f"demo-{uuid.uuid4().hex[:8]}"
    load_demo_data(auth_stack.config, tenant=tenant, spec=SMALL_DEMO)
    first = _snapshot(auth_stack, tenant)

    load_demo_data(auth_stack.config, tenant=tenant, spec=SMALL_DEMO)
    second = _snapshot(auth_stack, tenant)

    assert second == first
    events = len(generate(SMALL_DEMO).events)
    assert sum(first["raw"].values()) == events
    assert first["profile event_count"] == {u: n for u, n in first["raw"].items() if n}


# ---------------------------------------------------------------- `make bench`


def _settings(stack: Stack) -> CommonSettings:
    return CommonSettings(
        kafka_bootstrap_servers=stack.config.kafka_bootstrap_servers,
        bigtable_project=stack.config.bigtable_project,
        bigtable_instance=stack.config.bigtable_instance,
    )


@pytest.fixture
def leftovers(auth_stack: Stack) -> Iterator[tuple[str, str]]:
    """A bench table and topic as a killed bench run leaves them."""
    from confluent_kafka.admin import AdminClient, NewTopic

    token = uuid.uuid4().hex[:8]
    settings = _settings(auth_stack)
    table = core_bigtable.instance(settings, admin=True).table(f"bench{token}_leftover")
    table.create()
    topic = f"bench{token}.leftover"
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap_servers})
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(30)
    yield table.table_id, topic
    if table.exists():
        table.delete()


def test_make_bench_quick_measures_the_running_stack_with_nothing_set_and_cleans_up(
    auth_stack: Stack, leftovers: tuple[str, str], tmp_path: Path
) -> None:
    # What a fresh shell has: no emulator variable, no EVENTPIPE_* but the run folder (the
    # stack's, here the fixtures'; `.run` by default).
    env = {
        key: value
        for key, value in os.environ.items()
        if key != "BIGTABLE_EMULATOR_HOST" and not key.startswith("EVENTPIPE_")
    }
    env["EVENTPIPE_RUN_DIR"] = str(auth_stack.config.run_dir)
    # `make bench` but for its `up` (the fixtures started the stack) and `hey` (REST only);
    # one scenario, quick: the machine is shared.
    result = subprocess.run(
        [
            "make",
            "--no-print-directory",
            "-o",
            "up",
            "-o",
            "bench-tools",
            "bench",
            f"BENCH_ARGS=--quick --results-dir {tmp_path} kafka_producer_ceiling",
        ],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    document = json.loads((tmp_path / "kafka_producer_ceiling.json").read_text())
    assert document["measurements"][0]["value"] > 0
    table_id, topic = leftovers
    settings = _settings(auth_stack)
    tables = {t.table_id for t in core_bigtable.instance(settings, admin=True).list_tables()}
    assert table_id not in tables
    assert not any(t.startswith("bench") for t in tables)
    from confluent_kafka.admin import AdminClient

    topics = AdminClient({"bootstrap.servers": settings.kafka_bootstrap_servers}).list_topics(
        timeout=30
    )
    assert topic not in topics.topics
