"""The bench takes its settings from the running stack's saved configuration, not from
variables a newcomer never set (BIGTABLE_EMULATOR_HOST)."""

from __future__ import annotations

from pathlib import Path

import pytest
from eventpipe.stack.components import BigtableEmulator, KafkaBroker
from eventpipe.stack.stack import STACK_FILE, StackConfig

from bench import harness


def _saved_stack(run_dir: Path) -> StackConfig:
    config = StackConfig(
        run_dir=run_dir,
        envoy_port=18080,
        kafka_port=19092,
        emulator_port=18086,
        service_ports={"ingest": 15051, "store": 15052, "enrich": 15053, "query": 15054},
        bigtable_project="p-bench",
        bigtable_instance="i-bench",
        table_prefix="stack_",
        auth=True,
    )
    config.save()
    return config


def test_the_stack_config_saved_by_up_is_what_the_running_stack_config_reads(
    tmp_path: Path,
) -> None:
    saved = _saved_stack(tmp_path)

    found = StackConfig.of_running_stack({"EVENTPIPE_RUN_DIR": str(tmp_path)})

    assert found == saved
    assert (tmp_path / STACK_FILE).exists()


def test_without_a_saved_config_the_running_stack_config_is_the_environments(
    tmp_path: Path,
) -> None:
    environ = {"EVENTPIPE_RUN_DIR": str(tmp_path), "EVENTPIPE_KAFKA_PORT": "19999"}

    found = StackConfig.of_running_stack(environ)

    assert found == StackConfig.from_env(environ, run_dir=tmp_path)
    assert found.kafka_port == 19999


def test_a_saved_config_with_keys_this_version_does_not_know_still_loads(tmp_path: Path) -> None:
    data = {**_saved_stack(tmp_path).saved_form(), "a_later_setting": 1}

    assert StackConfig.from_saved(data, run_dir=tmp_path).emulator_port == 18086


def test_the_bench_points_itself_and_its_processes_at_the_stacks_kafka_and_emulator(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _saved_stack(tmp_path)
    monkeypatch.setattr(KafkaBroker, "is_healthy", lambda _self: True)
    monkeypatch.setattr(BigtableEmulator, "is_healthy", lambda _self: True)
    environ = {"EVENTPIPE_RUN_DIR": str(tmp_path), "BIGTABLE_EMULATOR_HOST": "elsewhere:1"}

    ctx = harness.stack_context(quick=True, environ=environ)

    assert environ["BIGTABLE_EMULATOR_HOST"] == "127.0.0.1:18086"
    assert environ["EVENTPIPE_KAFKA_BOOTSTRAP_SERVERS"] == "127.0.0.1:19092"
    assert "EVENTPIPE_TABLE_PREFIX" not in environ  # scenarios use prefixes of their own
    assert ctx.common.kafka_bootstrap_servers == "127.0.0.1:19092"
    assert (ctx.common.bigtable_project, ctx.common.bigtable_instance) == ("p-bench", "i-bench")
    assert ctx.endpoints["envoy"].endswith(":18080")
    assert ctx.endpoints["query"] == "127.0.0.1:15054"
    assert (ctx.quick, ctx.rounds) == (True, 1)


def test_the_bench_stops_at_once_naming_make_up_when_the_stack_does_not_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _saved_stack(tmp_path)
    monkeypatch.setenv("EVENTPIPE_RUN_DIR", str(tmp_path))
    monkeypatch.setattr(KafkaBroker, "is_healthy", lambda _self: False)
    monkeypatch.setattr(BigtableEmulator, "is_healthy", lambda _self: True)

    code = harness.main(["--quick", "--results-dir", str(tmp_path / "results")])

    assert code == 2
    message = capsys.readouterr().err
    assert "kafka" in message and "127.0.0.1:19092" in message and "make up" in message
    assert not (tmp_path / "results").exists()
