"""Purging the pull-through cache (issue 13, docs/proxy.md "Purge"): one mirror repository
(`docker.io/library/alpine`) or everything cached from one upstream (`docker.io`).

A purge deletes the repositories as `Registry.delete_repository` does (tags, manifests,
links, upload sessions, pull and cache statistics; the tag history records the deletions),
one transaction per repository (each holding the repository's lock first); garbage
collection then frees the bytes nothing else holds. The next pull fetches from the upstream
again. Local repositories are never purged. A purge runs under the collector's lock, as
eviction does, so a purge and an eviction (another replica's, the schedule's) never delete
the same content at once.
"""

from __future__ import annotations

from cangku.config import ProxySettings
from cangku.content.errors import NameInvalid, NameUnknown
from cangku.content.names import validate_repository_name
from cangku.metadata.proxy_cache import mirror_repositories
from cangku.registry import Registry
from cangku.registry.context import RequestContext


async def purge(
    registry: Registry, proxy: ProxySettings, target: str, context: RequestContext
) -> list[str]:
    """Purge `target`, an upstream's name or a mirror repository's; the repositories purged,
    by name. NameInvalid: not a repository name, or not under a configured upstream;
    NameUnknown: a repository with nothing cached."""
    validate_repository_name(target)
    upstream, _, rest = target.partition("/")
    if proxy.upstream(upstream) is None:
        raise NameInvalid(
            f"{target[:200]!r} is not under a configured upstream "
            f"({', '.join(u.name for u in proxy.upstreams) or 'none configured'})"
        )
    cached = await registry.metadata.read(
        lambda connection: [row.name for row in mirror_repositories(connection, upstream)]
    )
    if rest:
        if target not in cached:
            raise NameUnknown(f"nothing is cached in {target!r}", {"repository": target})
        cached = [target]
    async with registry.metadata.collector_lock():
        for name in cached:
            await registry.delete_repository(name, context)
    return cached
