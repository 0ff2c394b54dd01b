"""`cangku org`: organizations and their members."""

from __future__ import annotations

import argparse

from cangku.cli.common import _with_registry
from cangku.config import Settings


async def org_add(settings: Settings, args: argparse.Namespace) -> int:
    await _with_registry(settings, lambda r, a: a.add_organization(args.name))
    print(f"added organization {args.name}")
    return 0


async def org_del(settings: Settings, args: argparse.Namespace) -> int:
    await _with_registry(
        settings,
        lambda r, a: a.delete_organization(args.name, delete_repositories=args.delete_repositories),
    )
    print(f"deleted organization {args.name}")
    return 0


async def org_list(settings: Settings, args: argparse.Namespace) -> int:
    organizations = await _with_registry(settings, lambda r, a: a.list_organizations())
    for name, members in organizations.items():
        print(name)
        for user, role in sorted(members.items()):
            print(f"  {user}  {role}")
    return 0


async def member_set(settings: Settings, args: argparse.Namespace) -> int:
    await _with_registry(
        settings, lambda r, a: a.set_member(args.organization, args.user, args.role)
    )
    print(f"{args.user} is now {args.role} of {args.organization}")
    return 0


async def member_remove_run(settings: Settings, args: argparse.Namespace) -> int:
    await _with_registry(settings, lambda r, a: a.set_member(args.organization, args.user, None))
    print(f"removed {args.user} from {args.organization}")
    return 0
