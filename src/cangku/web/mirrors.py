"""The pull-through cache in the UI (issue 13, docs/proxy.md "The UI"): `/mirrors` lists the
cached repositories under their upstream with hit and miss counts and the last upstream
check; a repository page of a mirror says so; admins purge a repository or an upstream
(a confirmation page, then a POST carrying the session's CSRF token, like the deletes).

The counts are those written so far: they reach the database in the pull statistics'
batches, every 10 s (registry/pulls.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from cangku.auth.permissions import PULL
from cangku.config import UpstreamSettings
from cangku.content.errors import RegistryError
from cangku.content.names import validate_repository_name
from cangku.metadata import Connection
from cangku.metadata.proxy_cache import MirrorRow, mirror_repositories
from cangku.proxy.cache import upstream_name
from cangku.proxy.purge import purge
from cangku.web.site import PageError, Site, Viewer, not_found

# Repositories listed per upstream on /mirrors (the rest: "and N more").
MAX_LISTED = 500


@dataclass(frozen=True, slots=True)
class UpstreamListing:
    name: str
    url: str
    public: bool
    repositories: list[MirrorRow]
    hidden: int  # cached repositories the viewer may not see, or past MAX_LISTED


def purge_url(target: str) -> str:
    return "/mirrors/purge?" + urlencode({"target": target})


async def page_context(site: Site, name: str) -> dict[str, Any]:
    """For a repository page: `mirror` (upstream, remote name, counts) or None."""
    first, _, rest = name.partition("/")
    upstream = site.proxy.upstream(first) if rest else None
    if upstream is None:
        return {"mirror": None}
    rows = await site.registry.metadata.read(lambda c: mirror_repositories(c, first))
    row = next((row for row in rows if row.name == name), None)
    return {
        "mirror": {
            "upstream": upstream.name,
            "remote": upstream_name(first, rest),
            "stats": row,
            "purge_url": purge_url(name),
        }
    }


def _rows(connection: Connection, upstream: str) -> list[MirrorRow]:
    return mirror_repositories(connection, upstream)


def routes(site: Site) -> list[BaseRoute]:
    from cangku.web.repositories import repository_url

    def require_admin(viewer: Viewer) -> None:
        if not viewer.is_admin:
            raise PageError(403, "Not allowed", "Only administrators may purge the cache.")

    def target_of(request: Request, value: str | None) -> tuple[str, UpstreamSettings]:
        target = (value or "").strip()
        try:
            validate_repository_name(target)
        except RegistryError:
            raise not_found(f"{target[:200]!r} is not a repository name.") from None
        upstream = site.proxy.upstream(target.partition("/")[0])
        if upstream is None:
            raise not_found(f"{target!r} is not under an upstream this registry mirrors.")
        return target, upstream

    async def mirrors_page(request: Request, viewer: Viewer) -> Response:
        listings = []
        for upstream in site.proxy.upstreams:
            rows = await site.registry.metadata.read(partial(_rows, upstream=upstream.name))
            visible = [row for row in rows if PULL in await site.actions(viewer, row.name)]
            listings.append(
                UpstreamListing(
                    upstream.name,
                    upstream.url,
                    upstream.public,
                    visible[:MAX_LISTED],
                    len(rows) - len(visible[:MAX_LISTED]),
                )
            )
        return site.render(
            request,
            viewer,
            "mirrors.html",
            {
                "listings": listings,
                "may_purge": viewer.is_admin,
                "repository_url": repository_url,
                "purge_url": purge_url,
            },
        )

    async def purge_page(request: Request, viewer: Viewer) -> Response:
        if request.method == "POST":
            form = await site.checked_form(request, viewer)
            require_admin(viewer)
            target, _ = target_of(request, str(form.get("target", "")))
            await purge(site.registry, site.proxy, target, site.context(request, viewer))
            return site.redirect(request, viewer, "/mirrors")
        require_admin(viewer)
        target, upstream = target_of(request, request.query_params.get("target"))
        whole = "/" not in target
        return site.render(
            request,
            viewer,
            "confirm_delete.html",
            {
                "what": f"the cache of {target}",
                "goes": [
                    (
                        f"Every repository cached from {upstream.name}: its tags and images."
                        if whole
                        else f"The tags and images cached in {target}."
                    ),
                    "Their layers, once garbage collection finds nothing else uses them.",
                    f"The next pull fetches them from {upstream.url} again.",
                ],
                "back": "/mirrors" if whole else repository_url(target),
                "action": "/mirrors/purge",
                "fields": {"target": target},
                "verb": "Purge",
            },
        )

    page = site.page
    return [
        Route("/mirrors", page(mirrors_page), methods=["GET"]),
        Route("/mirrors/purge", page(purge_page), methods=["GET", "POST"]),
    ]
