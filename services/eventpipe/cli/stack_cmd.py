"""``eventpipe stack up|down|status|install``: the local stack as real processes.

Ports come from EVENTPIPE_*_PORT variables (see ``eventpipe.stack.stack.StackConfig``); logs,
data and pidfiles live under the repo's ``.run/`` folder, and ``up`` saves the configuration it
runs with in ``.run/stack.json`` for the tools that work against the running stack (``make bench``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from eventpipe.core.waiting import DeadlineExceeded
from eventpipe.stack import install
from eventpipe.stack.components import ComponentError
from eventpipe.stack.stack import Stack, StackConfig


def _stack(args: argparse.Namespace) -> Stack:
    run_dir = args.run_dir.resolve() if args.run_dir else None
    return Stack(StackConfig.from_env(run_dir=run_dir))


def _up(args: argparse.Namespace) -> int:
    stack = _stack(args)
    try:
        stack.up(demo=not args.no_demo, timeout=args.timeout)
    except (ComponentError, DeadlineExceeded, install.InstallError) as exc:
        print(f"\nstack up failed: {exc}", file=sys.stderr)
        print("What did start is still running: `eventpipe stack down` stops it.", file=sys.stderr)
        return 1
    print()
    print(stack.endpoints())
    return 0


def _down(args: argparse.Namespace) -> int:
    stopped = _stack(args).down()
    if not stopped:
        print("nothing was running")
    return 0


def _status(args: argparse.Namespace) -> int:
    rows = _stack(args).status()
    print(f"{'component':<10} {'pid':>8} {'port':>6}  health")
    for row in rows:
        pid = str(row.pid) if row.pid else "-"
        print(f"{row.name:<10} {pid:>8} {row.port:>6}  {row.health}")
    return 0


def _install(args: argparse.Namespace) -> int:
    tools = args.tools or list(install.ALL_TOOLS)
    unknown = sorted(set(tools) - set(install.ALL_TOOLS))
    if unknown:
        print(f"unknown tool(s): {', '.join(unknown)}", file=sys.stderr)
        return 2
    try:
        paths = install.install(tools)
    except install.InstallError as exc:
        print(f"install failed: {exc}", file=sys.stderr)
        return 1
    for name, path in paths.items():
        print(f"{name:<12} {path}")
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("stack", help="start, inspect and stop the local stack")
    parser.add_argument(
        "--run-dir",
        type=Path,
        default=None,
        help="folder for logs, data and pidfiles (default: <repo>/.run or EVENTPIPE_RUN_DIR)",
    )
    actions = parser.add_subparsers(dest="action", required=True)

    up = actions.add_parser("up", help="install what is missing, start everything, print endpoints")
    up.add_argument("--no-demo", action="store_true", help="do not load demo data")
    up.add_argument(
        "--timeout", type=float, default=None, help="seconds each component may take to be ready"
    )
    up.set_defaults(func=_up)

    down = actions.add_parser("down", help="stop what `stack up` started")
    down.set_defaults(func=_down)

    status = actions.add_parser("status", help="show each component, pid, port and health")
    status.set_defaults(func=_status)

    inst = actions.add_parser("install", help="download or build the components and tools")
    inst.add_argument(
        "tools",
        nargs="*",
        metavar="TOOL",
        help=f"any of {', '.join(install.ALL_TOOLS)} (default: all)",
    )
    inst.set_defaults(func=_install)
