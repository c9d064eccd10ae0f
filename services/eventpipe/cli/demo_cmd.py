"""`eventpipe demo generate`: writes the synthetic commerce data set (events and dimensions)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from eventpipe.demo.generator import HOUR_MICROS, DemoSpec, generate, write


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    demo = subparsers.add_parser("demo", help="synthetic demo data")
    demo_sub = demo.add_subparsers(dest="demo_command", required=True)
    gen = demo_sub.add_parser(
        "generate",
        help="write events.jsonl, users.jsonl and products.jsonl (deterministic for a seed)",
    )
    gen.add_argument("--out", type=Path, default=Path("demo-data"), help="output folder")
    gen.add_argument("--seed", type=int, default=42)
    gen.add_argument("--users", type=int, default=200)
    gen.add_argument("--products", type=int, default=60)
    gen.add_argument("--sessions", type=int, default=1000)
    gen.add_argument("--days", type=int, default=7, help="events span this many days")
    gen.add_argument(
        "--now",
        type=float,
        default=None,
        help="end of the window, Unix seconds (default: the current hour, so reruns within "
        "the hour are identical)",
    )
    gen.set_defaults(func=_generate)


def _generate(args: argparse.Namespace) -> int:
    if args.now is None:
        now_micros = (time.time_ns() // 1000) // HOUR_MICROS * HOUR_MICROS
    else:
        now_micros = int(args.now * 1_000_000)
    spec = DemoSpec(
        users=args.users,
        products=args.products,
        sessions=args.sessions,
        days=args.days,
        seed=args.seed,
        now_micros=now_micros,
    )
    data = generate(spec)
    paths = write(data, args.out)
    print(
        f"wrote {len(data.events)} events to {paths['events']}, {len(data.users)} user versions "
        f"to {paths['users']}, {len(data.products)} product versions to {paths['products']}"
    )
    return 0
