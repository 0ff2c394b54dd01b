"""The repository page's description and overview (issue 17): shown to whoever may pull,
edited by its owners with a form posted to `/r/<name>/-/description`."""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from cangku.auth.permissions import DELETE
from cangku.content.errors import RegistryError
from cangku.content.names import validate_repository_name
from cangku.metadata import descriptions as rows
from cangku.registry.descriptions import (
    clean_description,
    clean_overview,
    describe,
    set_description,
)
from cangku.web.markdown import render_markdown
from cangku.web.site import PageError, Site, Viewer, not_found


async def page_context(site: Site, name: str, tags: Collection[str]) -> dict[str, Any]:
    """What repository.html shows of the repository's texts and pulls (its total, and those
    of the `tags` on the page)."""
    about = await describe(site.registry, name)
    return {
        "about": about,
        "overview_html": render_markdown(about.overview) if about.overview else None,
        "pulls": await site.registry.pulls.repository(name, tags),
    }


async def listing_context(site: Site, names: list[str]) -> dict[str, Any]:
    """What repositories.html shows beside each name: description and pulls."""
    facts = await site.registry.metadata.read(
        lambda connection: rows.listing_facts(connection, names)
    )
    pulls = site.registry.pulls
    return {
        "descriptions": {name: facts.get(name, (None, 0))[0] for name in names},
        "pull_totals": {
            name: facts.get(name, (None, 0))[1] + pulls.pending_total(name) for name in names
        },
    }


def routes(site: Site, repository_url: Callable[..., str]) -> list[BaseRoute]:
    async def edit(request: Request, viewer: Viewer) -> Response:
        name: str = request.path_params["name"]
        try:
            validate_repository_name(name)
        except RegistryError:
            raise not_found(f"{name[:200]!r} is not a repository name.") from None
        form = await site.checked_form(request, viewer)
        await site.require(viewer, name, DELETE)
        try:
            description = clean_description(form.get("description") or None)
            overview = clean_overview(form.get("overview") or None)
        except RegistryError as error:
            raise PageError(400, "Cannot save the description", error.message) from None
        await set_description(site.registry, name, description, overview, viewer.name)
        return site.redirect(request, viewer, repository_url(name))

    return [Route("/r/{name:path}/-/description", site.page(edit), methods=["POST"])]
