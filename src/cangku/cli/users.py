"""`cangku user`: accounts."""

from __future__ import annotations

import argparse
import sys

from cangku.cli.common import _read_password, _with_registry
from cangku.config import Settings


async def user_add(settings: Settings, args: argparse.Namespace) -> int:
    password = _read_password()
    await _with_registry(settings, lambda r, a: a.add_user(args.name, password, admin=args.admin))
    print(f"added user {args.name}{' (admin)' if args.admin else ''}")
    return 0


async def user_passwd(settings: Settings, args: argparse.Namespace) -> int:
    password = _read_password()
    await _with_registry(settings, lambda r, a: a.set_password(args.name, password))
    print(f"changed the password of {args.name}")
    return 0


async def user_del(settings: Settings, args: argparse.Namespace) -> int:
    await _with_registry(
        settings,
        lambda r, a: a.delete_user(args.name, delete_repositories=args.delete_repositories),
    )
    print(f"deleted user {args.name}")
    return 0


async def user_disable(settings: Settings, args: argparse.Namespace) -> int:
    await _with_registry(settings, lambda r, a: a.set_disabled(args.name, True))
    print(f"disabled user {args.name}")
    return 0


async def user_enable(settings: Settings, args: argparse.Namespace) -> int:
    await _with_registry(settings, lambda r, a: a.set_disabled(args.name, False))
    print(f"enabled user {args.name}")
    return 0


async def user_list(settings: Settings, args: argparse.Namespace) -> int:
    users = await _with_registry(settings, lambda r, a: a.list_users())
    for user in users:
        flags = [flag for flag, on in (("admin", user.is_admin), ("disabled", user.disabled)) if on]
        print(f"{user.name}{'  (' + ', '.join(flags) + ')' if flags else ''}")
    return 0


async def user_import(settings: Settings, args: argparse.Namespace) -> int:
    text = args.file.read_text()
    added, skipped = await _with_registry(settings, lambda r, a: a.import_htpasswd(text))
    for name in added:
        print(f"added user {name}")
    for reason in skipped:
        print(f"skipped {reason}", file=sys.stderr)
    return 0 if not skipped else 1
