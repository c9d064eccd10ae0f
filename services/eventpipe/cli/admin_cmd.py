"""``eventpipe admin``: operator tasks on Kafka and Bigtable.

``ensure-topology`` creates missing topics and tables (idempotent); Kubernetes runs it as the
``ensure-topology`` Job. ``await-topology`` waits, with a deadline, until they all exist, without
creating anything: each service's init container runs it, so no service starts before the Job
has done its work (k8s/base/topology, docs/operations.md).
"""

from __future__ import annotations

import argparse
import sys

from eventpipe.core.config import CommonSettings, load_settings
from eventpipe.core.topology import ensure_topology, missing_topology, topic_specs
from eventpipe.core.waiting import DeadlineExceeded, wait_until

DEFAULT_AWAIT_TIMEOUT_SECONDS = 600.0


def _ensure_topology(_args: argparse.Namespace) -> int:
    settings = load_settings(CommonSettings)
    ensure_topology(settings)
    names = ", ".join(t.name for t in topic_specs(settings))
    print(f"topics ({names}) and tables (prefix {settings.table_prefix!r}) are in place")
    return 0


def _await_topology(args: argparse.Namespace) -> int:
    settings = load_settings(CommonSettings)
    missing: list[str] = ["(Kafka and Bigtable have not answered yet)"]

    def complete() -> bool:
        missing[:] = missing_topology(settings, tables=not args.topics_only)
        return not missing

    try:
        wait_until(
            complete,
            timeout=args.timeout,
            what="the topics and tables (eventpipe admin ensure-topology)",
            max_interval=5.0,
        )
    except DeadlineExceeded as exc:
        print(f"{exc}; still missing: {', '.join(missing)}", file=sys.stderr)
        return 1
    print("topics" + ("" if args.topics_only else " and tables") + " are in place")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    admin = subparsers.add_parser("admin", help="operator tasks on Kafka and Bigtable")
    actions = admin.add_subparsers(dest="action", required=True)
    ensure = actions.add_parser(
        "ensure-topology", help="create missing topics and tables from EVENTPIPE_* settings"
    )
    ensure.set_defaults(func=_ensure_topology)
    wait = actions.add_parser(
        "await-topology",
        help="wait until every topic and table exists (creates nothing); exit 1 at the deadline",
    )
    wait.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_AWAIT_TIMEOUT_SECONDS,
        help="seconds to wait (default %(default).0f)",
    )
    wait.add_argument(
        "--topics-only",
        action="store_true",
        help="ask Kafka only (for a pod without Bigtable access, such as ingest)",
    )
    wait.set_defaults(func=_await_topology)
