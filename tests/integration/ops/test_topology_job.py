"""``eventpipe admin ensure-topology`` (the Kubernetes Job) and ``await-topology`` (each
service's init container), against real Kafka and the Bigtable emulator: the services wait for
the Job and never start before the topics and tables exist."""

from __future__ import annotations

import pytest
from eventpipe.cli.main import main
from eventpipe.core.config import CommonSettings, load_settings
from eventpipe.core.kafka import admin_client
from eventpipe.core.topology import missing_topology, topic_specs, topology_table_specs

pytestmark = pytest.mark.integration


@pytest.fixture
def isolated_env(service_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> CommonSettings:
    for key, value in service_env.items():
        monkeypatch.setenv(key, value)
    return load_settings(CommonSettings)


def test_await_topology_gives_up_at_its_deadline_naming_every_missing_topic_and_table(
    isolated_env: CommonSettings, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["admin", "await-topology", "--timeout", "1"]) == 1

    error = capsys.readouterr().err
    for spec in topic_specs(isolated_env):
        assert f"topic {spec.name}" in error
    for table in topology_table_specs(isolated_env):
        assert f"table {isolated_env.table_prefix}{table.name}" in error
    # Waiting created nothing.
    assert len(missing_topology(isolated_env)) == len(topic_specs(isolated_env)) + len(
        topology_table_specs(isolated_env)
    )


def test_ensure_topology_creates_what_await_topology_waits_for_and_running_it_twice_is_harmless(
    isolated_env: CommonSettings, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["admin", "ensure-topology"]) == 0
    assert main(["admin", "ensure-topology"]) == 0

    assert main(["admin", "await-topology", "--timeout", "30"]) == 0
    assert "topics and tables are in place" in capsys.readouterr().out
    assert missing_topology(isolated_env) == []
    raw = admin_client(isolated_env).list_topics(isolated_env.raw_topic, timeout=10)
    assert len(raw.topics[isolated_env.raw_topic].partitions) == isolated_env.raw_topic_partitions


def test_await_topology_for_ingest_asks_kafka_only(
    isolated_env: CommonSettings, capsys: pytest.CaptureFixture[str]
) -> None:
    from eventpipe.core.kafka import ensure_topics

    ensure_topics(isolated_env, topic_specs(isolated_env))

    # The tables are still missing, which a Kafka-only pod cannot see and need not wait for.
    assert main(["admin", "await-topology", "--topics-only", "--timeout", "30"]) == 0
    assert capsys.readouterr().out.strip() == "topics are in place"
    assert missing_topology(isolated_env, tables=False) == []
    assert main(["admin", "await-topology", "--timeout", "1"]) == 1
