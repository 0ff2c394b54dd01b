"""`cangku usage`: bytes stored per namespace and repository."""

from __future__ import annotations

import argparse
import json

from cangku.cli.common import _print_table
from cangku.config import Settings
from cangku.content.units import format_size


async def usage_run(settings: Settings, args: argparse.Namespace) -> int:
    as_json = args.json
    from cangku.app import build_registry

    registry = build_registry(settings)
    try:
        report = await registry.usage()
    finally:
        await registry.metadata.close()
    if as_json:
        print(json.dumps(report.to_json(), indent=2))
        return 0
    header = ("NAMESPACE / REPOSITORY", "MANIFESTS", "TAGS", "BLOBS", "DEDUPLICATED", "APPARENT")
    rows = [(*header, "QUOTA")]
    for namespace in report.namespaces:
        quota = "-"
        if namespace.quota_bytes is not None:
            used = namespace.deduplicated_bytes / max(namespace.quota_bytes, 1) * 100
            quota = f"{format_size(namespace.quota_bytes)} ({used:.0f}% used)"
        rows.append(
            (
                namespace.namespace,
                str(sum(r.manifests for r in namespace.repositories)),
                str(sum(r.tags for r in namespace.repositories)),
                "",
                format_size(namespace.deduplicated_bytes),
                format_size(namespace.apparent_bytes),
                quota,
            )
        )
        for repository in namespace.repositories:
            rows.append(
                (
                    f"  {repository.repository}",
                    str(repository.manifests),
                    str(repository.tags),
                    str(repository.blobs),
                    format_size(repository.deduplicated_bytes),
                    format_size(repository.apparent_bytes),
                    "",
                )
            )
    rows.append(
        (
            "total",
            "",
            "",
            "",
            format_size(report.deduplicated_bytes),
            format_size(report.apparent_bytes),
            f"blob store {format_size(report.blob_store_bytes)}",
        )
    )
    _print_table(rows)
    return 0
