"""`cangku quota`: storage quotas per namespace."""

from __future__ import annotations

import argparse
import sys

from cangku.cli.common import _print_table
from cangku.config import Settings
from cangku.content.units import format_size


async def quota_run(settings: Settings, args: argparse.Namespace) -> int:
    action = args.action
    namespace: str | None = getattr(args, "namespace", None)
    size: int | None = getattr(args, "size", None)
    from cangku.app import build_registry
    from cangku.content.errors import RegistryError

    registry = build_registry(settings)
    try:
        if action == "set":
            assert namespace is not None and size is not None
            quota = await registry.set_quota(namespace, size)
            print(
                f"quota of {quota.namespace}: {format_size(quota.limit_bytes)} "
                f"({quota.limit_bytes} bytes); {format_size(quota.usage_bytes)} used"
            )
        elif action == "unset":
            assert namespace is not None
            if not await registry.unset_quota(namespace):
                print(f"cangku: {namespace} has no quota", file=sys.stderr)
                return 1
            print(f"quota of {namespace} removed")
        else:
            rows = [("NAMESPACE", "QUOTA", "USED", "QUOTA BYTES", "USED BYTES")]
            for quota in await registry.quotas():
                rows.append(
                    (
                        quota.namespace,
                        format_size(quota.limit_bytes),
                        format_size(quota.usage_bytes),
                        str(quota.limit_bytes),
                        str(quota.usage_bytes),
                    )
                )
            _print_table(rows)
    except RegistryError as error:
        print(f"cangku: {error.message}", file=sys.stderr)
        return 2
    finally:
        await registry.metadata.close()
    return 0
