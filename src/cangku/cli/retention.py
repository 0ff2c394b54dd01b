"""`cangku retention ...` (issue 17): set and show retention policies, dry-run and run them.
See docs/retention.md."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from cangku.config import Settings
from cangku.content.units import parse_duration
from cangku.registry.retention import (
    RetentionPlan,
    RetentionPolicy,
    apply_all,
    apply_retention,
    plan_retention,
    retention_policies,
    set_retention_policy,
)


def add_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    command: Callable[..., argparse.ArgumentParser],
) -> None:
    retention = commands.add_parser(
        "retention", help="retention policies: which tags to keep"
    ).add_subparsers(dest="action", required=True)
    set_ = command(retention, "set", "set (or --unset) the policy of a scope", run=set_run)
    where = set_.add_mutually_exclusive_group(required=True)
    where.add_argument("--repository", metavar="NAME")
    where.add_argument("--namespace", metavar="NAMESPACE")
    where.add_argument("--server", action="store_true", help="the default for every repository")
    set_.add_argument("--unset", action="store_true", help="remove the scope's policy")
    set_.add_argument(
        "--keep-tags", action="append", default=[], metavar="REGEX", help="keep matching tags"
    )
    set_.add_argument("--keep-pushed", type=int, metavar="N", help="the N most recently pushed")
    set_.add_argument("--keep-pulled", type=int, metavar="N", help="the N most recently pulled")
    set_.add_argument("--keep-pushed-within", type=_seconds, metavar="DURATION", help="e.g. 30d")
    set_.add_argument("--keep-pulled-within", type=_seconds, metavar="DURATION", help="e.g. 90d")
    set_.add_argument(
        "--keep-patches", type=int, metavar="N", help="newest N releases of each MAJOR.MINOR line"
    )
    set_.add_argument(
        "--keep-minors", type=int, metavar="N", help="newest N minor lines of each major"
    )
    command(retention, "list", "every stored policy", run=list_run)
    run = command(
        retention,
        "run",
        "delete the tags the policy does not keep (--dry-run: only list them)",
        run=run_run,
    )
    target = run.add_mutually_exclusive_group(required=True)
    target.add_argument("name", nargs="?", help="repository")
    target.add_argument("--all", action="store_true", help="every repository")
    run.add_argument("--dry-run", action="store_true", help="list what would go and why")
    run.add_argument("--json", action="store_true", help="print the plans as JSON")


def _seconds(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


async def _with_metadata(settings: Settings, work: Callable[[Any], Any]) -> Any:
    from cangku.app import build_registry

    registry = build_registry(settings)
    try:
        return await work(registry)
    finally:
        await registry.metadata.close()


async def set_run(settings: Settings, args: argparse.Namespace) -> int:
    scope, name = (
        ("repository", args.repository)
        if args.repository
        else ("namespace", args.namespace)
        if args.namespace
        else ("server", "")
    )
    policy = None
    if not args.unset:
        policy = RetentionPolicy.from_json(
            {
                "keep_tags": args.keep_tags,
                "keep_pushed": args.keep_pushed,
                "keep_pulled": args.keep_pulled,
                "keep_pushed_within": args.keep_pushed_within,
                "keep_pulled_within": args.keep_pulled_within,
                "keep_patches": args.keep_patches,
                "keep_minors": args.keep_minors,
            }
        )
        if not policy.has_rules:
            raise ValueError("give at least one --keep-... rule, or --unset")
    await _with_metadata(
        settings, lambda registry: set_retention_policy(registry.metadata, scope, name, policy)
    )
    where = f"{scope} {name}".strip()
    print(f"{where}: {policy.describe() if policy else 'no retention policy'}")
    return 0


async def list_run(settings: Settings, args: argparse.Namespace) -> int:
    stored = await _with_metadata(settings, lambda r: retention_policies(r.metadata))
    if not stored:
        print("no retention policies")
    for scope, name, policy in stored:
        print(f"{f'{scope} {name}'.strip()}: {policy.describe()}")
    return 0


async def run_run(settings: Settings, args: argparse.Namespace) -> int:
    async def work(registry: Any) -> list[RetentionPlan]:
        if args.all:
            if args.dry_run:
                from cangku.metadata import retention as rows

                names = [n for _, n in await registry.metadata.read(rows.repositories_with_tags)]
                return [await plan_retention(registry.metadata, name) for name in names]
            return list(await apply_all(registry.metadata))
        if args.dry_run:
            return [await plan_retention(registry.metadata, args.name)]
        return [await apply_retention(registry.metadata, args.name)]

    plans: list[RetentionPlan] = await _with_metadata(settings, work)
    if args.json:
        print(json.dumps([plan.to_json() for plan in plans], indent=2))
        return 0
    print_plans(plans, dry_run=args.dry_run)
    return 0


def print_plans(plans: list[RetentionPlan], *, dry_run: bool) -> None:
    verb = "would delete" if dry_run else "deleted"
    total = 0
    for plan in plans:
        for verdict in plan.deletions:
            total += 1
            print(f"{verb} {plan.repository}:{verdict.tag}  ({plan.scope} policy)")
            for reason in verdict.reasons:
                print(f"    {reason}")
    print(f"{verb} {total} tags")


async def retain_before_gc(metadata: Any, *, dry_run: bool) -> None:
    """`cangku gc`: apply every policy (or, in a dry run, list what each would delete)."""
    if dry_run:
        from cangku.metadata import retention as rows

        names = [name for _, name in await metadata.read(rows.repositories_with_tags)]
        plans = [await plan_retention(metadata, name) for name in names]
        plans = [plan for plan in plans if plan.deletions]
    else:
        plans = await apply_all(metadata)
    if plans:
        print_plans(plans, dry_run=dry_run)
