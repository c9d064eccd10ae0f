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
from eventpipe.stack.stack import PROFILES, Stack, StackConfig


def _run_dir(args: argparse.Namespace) -> Path | None:
    return args.run_dir.resolve() if args.run_dir else None


def _stack(args: argparse.Namespace) -> Stack:
    """The stack ``up`` saved in the run folder, with the profile it was started with."""
    return Stack(StackConfig.of_running_stack(run_dir=_run_dir(args)))


def _up(args: argparse.Namespace) -> int:
    try:
        config = StackConfig.from_env(run_dir=_run_dir(args), profile=args.profile, tls=args.tls)
    except ValueError as exc:
        print(f"stack up: {exc}", file=sys.stderr)
        return 2
    stack = Stack(config)
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
    stack = _stack(args)
    rows = stack.status()
    print(f"profile: {stack.config.profile}")
    print(f"{'component':<14} {'pid':>8} {'port':>6}  health")
    for row in rows:
        pid = str(row.pid) if row.pid else "-"
        print(f"{row.name:<14} {pid:>8} {row.port:>6}  {row.health}")
    return 0


def _install(args: argparse.Namespace) -> int:
    return install.main(args.tools or [])


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
        "--profile",
        choices=PROFILES,
        default="default",
        help="default: one of each component; cluster: 3 Kafka brokers, 2 replicas of each "
        "service behind Envoy, a Spark standalone master and worker (docs/cluster.md)",
    )
    up.add_argument(
        "--tls",
        action="store_true",
        help="Envoy terminates TLS with a self-signed certificate (EVENTPIPE_EDGE_TLS=true)",
    )
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
