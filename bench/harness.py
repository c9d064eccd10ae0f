"""The benchmark harness: runs scenarios, pairs each figure with its raw baseline, writes results.

A scenario is a module in ``bench/scenarios`` with ``NAME: str`` and
``run(ctx: BenchContext) -> list[Measurement]``. Every measurement that has a baseline
carries it, measured in the same run, and the report shows the ratio. Machines are shared and
noisy: use ``median_of`` over several rounds and report medians.

The settings come from the running local stack, as ``make up`` saved them in its run folder
(``<run_dir>/stack.json``, ``EVENTPIPE_RUN_DIR`` or ``.run``): Kafka's address, the Bigtable
emulator's (``BIGTABLE_EMULATOR_HOST`` is set from it for this process and every process a
scenario starts), project and instance. A stack that does not run stops the bench at once.
Every table and topic a scenario makes starts with ``bench`` and is deleted when it ends, and
at the start of a run (what a killed run left), so ``make bench`` can run again and again.

    python -m bench.harness [--quick] [--results-dir DIR] [SCENARIO ...]
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import pkgutil
import statistics
import sys
import time
from collections.abc import Callable, MutableMapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

from eventpipe.core.config import CommonSettings, load_settings
from eventpipe.stack.stack import Stack, StackConfig

RESULTS_DIR = Path(__file__).resolve().parent / "results"


class StackNotRunning(RuntimeError):
    """The bench needs the local stack's Kafka and emulator; the message says how to start it."""


@dataclass
class Measurement:
    """One figure, with the raw baseline it is compared against (if any)."""

    name: str
    value: float
    unit: str
    baseline_name: str | None = None
    baseline_value: float | None = None
    higher_is_better: bool = True
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.baseline_value in (None, 0) or self.baseline_name is None:
            return None
        return self.value / self.baseline_value  # type: ignore[operator]


@dataclass
class BenchContext:
    """What a scenario gets: settings of the running local stack, and where to write."""

    common: CommonSettings
    endpoints: dict[str, str] = field(default_factory=dict)
    quick: bool = False
    rounds: int = 3


def median_of(rounds: int, measure: Callable[[], float]) -> float:
    """Runs ``measure`` ``rounds`` times and returns the median."""
    return statistics.median(measure() for _ in range(rounds))


def timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def _markdown(name: str, measurements: list[Measurement]) -> str:
    lines = [f"## {name}", "", "| measurement | value | baseline | ratio |", "|---|---|---|---|"]
    for m in measurements:
        baseline = (
            f"{m.baseline_value:,.2f} {m.unit} ({m.baseline_name})"
            if m.baseline_value is not None
            else "-"
        )
        ratio = f"{m.ratio:.2f}" if m.ratio is not None else "-"
        lines.append(f"| {m.name} | {m.value:,.2f} {m.unit} | {baseline} | {ratio} |")
    notes = [m.note for m in measurements if m.note]
    if notes:
        lines += ["", *(f"- {n}" for n in notes)]
    return "\n".join(lines) + "\n"


BENCH_TABLE_PREFIX = "bench"
"""Every scenario's tables and topics start with this; the stack's own use the settings' prefix."""


def stack_environment(config: StackConfig) -> dict[str, str]:
    """The connection settings of the stack ``config`` describes: what the bench process and the
    processes its scenarios start need. Not the stack's own prefixes: scenarios use their own."""
    env = config.service_env()
    return {
        name: env[name]
        for name in (
            "EVENTPIPE_KAFKA_BOOTSTRAP_SERVERS",
            "EVENTPIPE_BIGTABLE_PROJECT",
            "EVENTPIPE_BIGTABLE_INSTANCE",
            "BIGTABLE_EMULATOR_HOST",
        )
    }


def stack_context(
    quick: bool = False, environ: MutableMapping[str, str] = os.environ
) -> BenchContext:
    """A context on the running local stack; sets its connection settings in ``environ``.

    Raises StackNotRunning when its Kafka or emulator does not answer.
    """
    config = StackConfig.of_running_stack(environ)
    stack = Stack(config, progress=lambda _message: None)
    down = [c.name for c in (stack.kafka, stack.bigtable) if not c.safe_is_healthy()]
    if down:
        raise StackNotRunning(
            f"the local stack of {config.run_dir} is not running ({', '.join(down)} on "
            + ", ".join(f"127.0.0.1:{c.port}" for c in (stack.kafka, stack.bigtable))
            + " did not answer): start it with `make up` (or set EVENTPIPE_RUN_DIR to the "
            "run folder of the stack to measure)"
        )
    # The stack's values win over the caller's: the bench measures the local stack, and a
    # stray BIGTABLE_EMULATOR_HOST (or none) must not send it elsewhere.
    connection = stack_environment(config)
    environ.update(connection)
    common = load_settings(CommonSettings).model_copy(
        update={
            "kafka_bootstrap_servers": connection["EVENTPIPE_KAFKA_BOOTSTRAP_SERVERS"],
            "bigtable_project": connection["EVENTPIPE_BIGTABLE_PROJECT"],
            "bigtable_instance": connection["EVENTPIPE_BIGTABLE_INSTANCE"],
        }
    )
    endpoints = {
        "envoy": stack.envoy.base_url,
        **{name: service.address for name, service in stack.services.items()},
    }
    return BenchContext(
        common=common,
        endpoints=endpoints,
        quick=quick,
        rounds=1 if quick else 3,
    )


def drop_bench_tables(common: CommonSettings) -> list[str]:
    """The emulator keeps every table in memory (a 1M-event enrich run holds gigabytes), so
    a scenario's tables are dropped when it ends. Returns the names dropped."""
    from eventpipe.core import bigtable as core_bigtable

    dropped = []
    for table in core_bigtable.instance(common, admin=True).list_tables():
        if table.table_id.startswith(BENCH_TABLE_PREFIX):
            table.delete()
            dropped.append(table.table_id)
    return dropped


def delete_bench_topics(common: CommonSettings) -> list[str]:
    """Scenario topics (millions of events in full mode) stay on the broker's disk otherwise."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": common.kafka_bootstrap_servers})
    topics = [
        name for name in admin.list_topics(timeout=30).topics if name.startswith(BENCH_TABLE_PREFIX)
    ]
    if topics:
        for future in admin.delete_topics(topics, operation_timeout=30).values():
            future.result()
    return topics


def clean_up(common: CommonSettings) -> None:
    """Deletes every bench table and topic; a failure is reported, never hides a result."""
    for step in (drop_bench_tables, delete_bench_topics):
        try:
            step(common)
        except Exception as exc:
            print(f"   cleanup ({step.__name__}) failed: {exc!r}", flush=True)


def run_scenarios(
    selected: list[str],
    quick: bool = False,
    results_dir: Path = RESULTS_DIR,
    ctx: BenchContext | None = None,
) -> int:
    import bench.scenarios as package

    ctx = ctx or stack_context(quick)
    results_dir.mkdir(parents=True, exist_ok=True)
    clean_up(ctx.common)
    names = [m.name for m in pkgutil.iter_modules(package.__path__)]
    failed = 0
    report = ["# EventPipe benchmarks", ""]
    for module_name in sorted(names):
        module = importlib.import_module(f"bench.scenarios.{module_name}")
        scenario = getattr(module, "NAME", module_name)
        if selected and scenario not in selected and module_name not in selected:
            continue
        print(f"== {scenario}", flush=True)
        try:
            measurements = module.run(ctx)
        except Exception as exc:  # a broken scenario must not hide the others
            failed += 1
            print(f"   FAILED: {exc!r}", flush=True)
            continue
        finally:
            clean_up(ctx.common)
        (results_dir / f"{scenario}.json").write_text(
            json.dumps(
                {
                    "scenario": scenario,
                    "measurements": [{**asdict(m), "ratio": m.ratio} for m in measurements],
                },
                indent=2,
            )
        )
        table = _markdown(scenario, measurements)
        (results_dir / f"{scenario}.md").write_text(table)
        report.append(table)
        print(table, flush=True)
    (results_dir / "README.md").write_text("\n".join(report))
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.harness", description="Benchmarks against the running local stack."
    )
    parser.add_argument("scenarios", nargs="*", help="scenario names (default: all)")
    parser.add_argument("--quick", action="store_true", help="smaller sizes, one round")
    parser.add_argument(
        "--results-dir", type=Path, default=RESULTS_DIR, help=f"default: {RESULTS_DIR}"
    )
    args = parser.parse_args(argv)
    try:
        ctx = stack_context(args.quick)
    except StackNotRunning as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    return run_scenarios(args.scenarios, args.quick, args.results_dir, ctx)


if __name__ == "__main__":
    sys.exit(main())
