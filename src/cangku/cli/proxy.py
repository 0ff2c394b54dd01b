"""`cangku proxy`: the pull-through cache (docs/proxy.md)."""

from __future__ import annotations

import argparse

from cangku.config import Settings
from cangku.registry.context import RequestContext

PURGE_HELP = """\
Delete what the pull-through cache holds of one mirror repository
(docker.io/library/alpine) or of a whole upstream (docker.io): its tags and manifests go
now, garbage collection frees the bytes; the next pull fetches from the upstream again.
Local repositories are never touched. Safe while the server runs."""


async def purge_run(settings: Settings, args: argparse.Namespace) -> int:
    from cangku.cli.common import _with_registry
    from cangku.proxy.purge import purge

    purged = await _with_registry(
        settings,
        lambda registry, _: purge(
            registry, settings.proxy, args.target, RequestContext(caller="cli:proxy-purge")
        ),
    )
    for name in purged:
        print(f"purged {name}")
    print(f"purged {len(purged)} cached repositories; `cangku gc` frees their bytes")
    return 0
