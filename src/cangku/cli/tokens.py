"""`cangku token`: personal access tokens."""

from __future__ import annotations

import argparse
import sys

from cangku.cli.common import _with_registry
from cangku.config import Settings


async def token_create(settings: Settings, args: argparse.Namespace) -> int:
    token = await _with_registry(
        settings, lambda r, a: a.create_token(args.user, args.name, args.scope)
    )
    print(token)
    print("Use it as the password of `docker login`. It is shown only this once.", file=sys.stderr)
    return 0


async def token_list(settings: Settings, args: argparse.Namespace) -> int:
    import datetime

    def when(moment: float | None) -> str:
        if moment is None:
            return "never"
        return datetime.datetime.fromtimestamp(moment, datetime.UTC).strftime("%Y-%m-%d %H:%M")

    tokens = await _with_registry(settings, lambda r, a: a.list_tokens(args.user))
    for token in tokens:
        state = f"revoked {when(token.revoked_at)}" if token.revoked_at else "active"
        print(
            f"{token.id}  {token.name}  {token.scope}  created {when(token.created_at)}  "
            f"last used {when(token.last_used_at)}  {state}"
        )
    return 0


async def token_revoke(settings: Settings, args: argparse.Namespace) -> int:
    if args.all == (args.token is not None):
        print("name one token, or give --all", file=sys.stderr)
        return 2
    if args.all:
        count = await _with_registry(settings, lambda r, a: a.revoke_all_tokens(args.user))
        print(f"revoked {count} tokens of {args.user}")
        return 0
    await _with_registry(settings, lambda r, a: a.revoke_token(args.user, args.token))
    print(f"revoked token {args.token} of {args.user}")
    return 0
