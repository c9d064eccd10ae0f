"""The benchmark harness: runs scenarios, pairs each figure with its raw baseline, writes results.

A scenario is a module in ``bench/scenarios`` with ``NAME: str`` and
``run(ctx: BenchContext) -> list[Measurement]``. Every measurement that has a baseline
carries it, measured in the same run, and the report shows the ratio. Machines are shared and
noisy: use ``median_of`` over several rounds and report medians.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from eventpipe.core.config import CommonSettings, load_settings

RESULTS_DIR = Path(__file__).resolve().parent / "results"


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
"""Every scenario's tables start with this; the stack's own use the settings' prefix."""


def drop_bench_tables(common: CommonSettings) -> None:
    """The emulator keeps every table in memory (a 1M-event enrich run holds gigabytes), so
    a scenario's tables are dropped when it ends."""
    from eventpipe.core import bigtable as core_bigtable

    for table in core_bigtable.instance(common, admin=True).list_tables():
        if table.table_id.startswith(BENCH_TABLE_PREFIX):
            table.delete()


def run_scenarios(selected: list[str], quick: bool = False) -> int:
    import bench.scenarios as package

    ctx = BenchContext(common=load_settings(CommonSettings), quick=quick, rounds=1 if quick else 3)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
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
            drop_bench_tables(ctx.common)
        (RESULTS_DIR / f"{scenario}.json").write_text(
            json.dumps(
                {
                    "scenario": scenario,
                    "measurements": [{**asdict(m), "ratio": m.ratio} for m in measurements],
                },
                indent=2,
            )
        )
        table = _markdown(scenario, measurements)
        (RESULTS_DIR / f"{scenario}.md").write_text(table)
        report.append(table)
        print(table, flush=True)
    (RESULTS_DIR / "README.md").write_text("\n".join(report))
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    quick = "--quick" in args
    return run_scenarios([a for a in args if not a.startswith("--")], quick=quick)


if __name__ == "__main__":
    sys.exit(main())
