"""``eventpipe admin ensure-topology``: create missing topics and tables (idempotent)."""

from __future__ import annotations

import argparse

from eventpipe.core.config import CommonSettings, load_settings
from eventpipe.core.topology import ensure_topology, topic_specs


def _ensure_topology(_args: argparse.Namespace) -> int:
    settings = load_settings(CommonSettings)
    ensure_topology(settings)
    names = ", ".join(t.name for t in topic_specs(settings))
    print(f"topics ({names}) and tables (prefix {settings.table_prefix!r}) are in place")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    admin = subparsers.add_parser("admin", help="operator tasks on Kafka and Bigtable")
    actions = admin.add_subparsers(dest="action", required=True)
    ensure = actions.add_parser(
        "ensure-topology", help="create missing topics and tables from EVENTPIPE_* settings"
    )
    ensure.set_defaults(func=_ensure_topology)
