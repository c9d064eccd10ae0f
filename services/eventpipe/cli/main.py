"""Entry point of the `eventpipe` command.

Each sub-command lives in its own module under ``eventpipe.cli`` and exposes
``register(subparsers)``; the module is listed once in ``COMMAND_MODULES``. Modules are
imported lazily so that ``eventpipe stack ...`` works before optional pieces are built.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# (sub-command, module): each module defines register(subparsers) -> None, whose parsers set
# `func` to a callable taking the parsed args and returning an exit code.
COMMAND_MODULES: tuple[tuple[str, str], ...] = (
    ("stack", "eventpipe.cli.stack_cmd"),
    ("ingest", "eventpipe.cli.ingest_cmd"),
    ("demo", "eventpipe.cli.demo_cmd"),
    ("dimensions", "eventpipe.cli.dimensions_cmd"),
    ("enrich", "eventpipe.cli.enrich_cmd"),
    ("auth", "eventpipe.cli.auth_cmd"),
    ("admin", "eventpipe.cli.admin_cmd"),
    ("dlq", "eventpipe.cli.dlq_cmd"),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="eventpipe", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True)
    for _name, module_name in COMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue  # not built yet
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
