"""``eventpipe auth token``: mint a development token signed by the local stack's key."""

from __future__ import annotations

import argparse
from pathlib import Path

from eventpipe.core.auth import OPERATOR_SCOPE, SCOPES, generate_local_keys, mint_token
from eventpipe.stack.stack import StackConfig


def _token(args: argparse.Namespace) -> int:
    scopes = [s.strip() for s in args.scope.split(",") if s.strip()]
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown:
        raise SystemExit(f"unknown scope(s) {', '.join(unknown)}; choose from {', '.join(SCOPES)}")
    if args.tenant is None and OPERATOR_SCOPE not in scopes:
        raise SystemExit("--tenant is required, except for an operator token (--scope operator)")
    keys_dir = args.keys_dir or StackConfig.of_running_stack().auth_dir
    private_path, jwks_path = generate_local_keys(keys_dir)
    print(
        mint_token(
            private_path.read_bytes(),
            jwks_path,
            tenant_id=args.tenant,
            scopes=scopes,
            ttl_seconds=args.ttl,
        )
    )
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    auth = subparsers.add_parser("auth", help="development tokens for the local stack")
    actions = auth.add_subparsers(dest="action", required=True)
    token = actions.add_parser("token", help="print a signed JWT for a tenant and scopes")
    token.add_argument(
        "--tenant",
        default=None,
        help="the tenant_id claim; an operator token (--scope operator) may go without",
    )
    token.add_argument(
        "--scope",
        default="ingest,query",
        help=f"comma-separated, of {', '.join(SCOPES)}; operator reaches the RPCs that span "
        "tenants (GetConsumerStatus)",
    )
    token.add_argument("--ttl", type=int, default=3600, help="seconds until it expires")
    token.add_argument(
        "--keys-dir", type=Path, default=None, help="default: the local stack's (EVENTPIPE_RUN_DIR)"
    )
    token.set_defaults(func=_token)
