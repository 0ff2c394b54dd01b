"""`cangku repo` and `cangku namespace`: visibility and tag policies."""

from __future__ import annotations

import argparse

from cangku.cli.common import _with_registry
from cangku.config import Settings
from cangku.registry.context import IN_PROCESS


async def repo_set_run(settings: Settings, args: argparse.Namespace) -> int:
    await _with_registry(settings, lambda r, a: a.set_public(args.name, args.public))
    print(f"{args.name} is now {'public' if args.public else 'private'}")
    return 0


async def tag_policy_run(settings: Settings, args: argparse.Namespace) -> int:
    def switch(value: str | None) -> bool | None:
        return None if value is None else value == "on"

    policy = await _with_registry(
        settings,
        lambda r, a: r.set_tag_policy(
            args.scope,
            args.name,
            floating=switch(args.floating),
            immutable_versions=switch(args.immutable_versions),
        ),
    )
    print(f"{args.scope} {args.name}")
    print(f"  floating tags:      {'on' if policy.floating else 'off'}")
    print(f"  immutable versions: {'on' if policy.immutable_versions else 'off'}")
    return 0


async def release_tag_run(settings: Settings, args: argparse.Namespace) -> int:
    follows = await _with_registry(
        settings, lambda r, a: r.repository(args.name).tags.release(args.tag, IN_PROCESS)
    )
    if follows is None:
        print(f"{args.name}:{args.tag} follows the first release of its line that arrives")
    else:
        print(f"{args.name}:{args.tag} follows {follows} now")
    return 0
