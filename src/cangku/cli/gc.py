"""`cangku gc`: garbage collection beside the running server."""

from __future__ import annotations

import argparse

from cangku.config import Settings
from cangku.content.units import format_duration, format_size

GC_HELP = """\
First the retention policies delete the tags they do not keep (docs/retention.md), and
the pull-through cache evicts what proxy.max_size and proxy.evict_after say (docs/proxy.md);
then delete what no tag needs any more: blobs no manifest references (older than the grace
period), untagged manifests if gc.untagged says so, idle upload sessions (uploads.expire).
Runs beside the server on the same data directory; see docs/garbage-collection.md."""


async def gc_run(settings: Settings, args: argparse.Namespace) -> int:
    dry_run, grace = args.dry_run, args.grace
    from cangku.app import build_collector, build_evictor, build_registry
    from cangku.cli import retention

    if grace is not None:
        settings = settings.model_copy(
            update={"gc": settings.gc.model_copy(update={"grace": grace})}
        )
    registry = build_registry(settings)
    try:
        # Issue 17: the retention policies first (a dry run lists what they would delete).
        await retention.retain_before_gc(registry.metadata, dry_run=dry_run)
        # Issue 13: eviction from the pull-through cache, so the collection frees its bytes.
        # (A dry run rehearses each step alone: its collection does not count the bytes
        # the eviction would free.)
        evictor = build_evictor(settings, registry)
        eviction = await evictor.evict(dry_run=dry_run) if evictor is not None else None
        report = await build_collector(settings, registry).collect(dry_run=dry_run)
    finally:
        await registry.metadata.close()
    if eviction is not None:
        for evicted in eviction.manifests if dry_run else ():
            print(f"evict     {evicted.repository}@{evicted.digest}  ({evicted.reason})")
        print(f"pull-through cache: {eviction.summary()}")
    if dry_run:
        for manifest in report.manifests:
            print(f"manifest  {manifest.repository}@{manifest.digest}  {manifest.size} bytes")
        for blob in report.blobs:
            kind = "file" if blob.orphan else "blob"
            print(f"{kind}      {blob.digest}  {blob.size} bytes")
        for upload_id in report.uploads:
            print(f"upload    {upload_id}")
    print(f"grace period {format_duration(settings.gc.grace)}: {report.summary()}")
    if dry_run:
        print(f"would free {report.freed_bytes} bytes ({format_size(report.freed_bytes)})")
    return 0
