"""Usage over time on the pages (issue 17): the namespace page `/n/<namespace>` and the
admin page draw the last 30 days as small SVG charts (web/charts.py)."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from cangku.content.errors import RegistryError
from cangku.content.names import validate_repository_name
from cangku.content.units import format_size
from cangku.registry.usage_history import usage_history
from cangku.web.charts import bar_chart
from cangku.web.site import SignInRequired, Site, Viewer, not_found

CHART_DAYS = 30


async def usage_charts(site: Site, namespace: str | None) -> dict[str, Any]:
    """Bytes stored, pushes and pulls per day, for one namespace or the whole registry."""
    days = await usage_history(site.registry.metadata, namespace, CHART_DAYS)
    stored = [
        (day.day, float(day.stored_bytes) if day.stored_bytes is not None else None) for day in days
    ]
    return {
        "usage_days": days,
        "usage_charts": [
            (
                "Bytes stored",
                bar_chart("Bytes stored per day", stored, lambda v: format_size(int(v))),
            ),
            (
                "Pushes",
                bar_chart("Manifests pushed per day", [(d.day, float(d.pushes)) for d in days]),
            ),
            ("Pulls", bar_chart("Pulls per day", [(d.day, float(d.pulls)) for d in days])),
        ],
    }


def routes(site: Site) -> list[BaseRoute]:
    async def namespace_page(request: Request, viewer: Viewer) -> Response:
        namespace: str = request.path_params["namespace"]
        try:
            validate_repository_name(namespace)
        except RegistryError:
            raise not_found(f"{namespace[:200]!r} is not a namespace.") from None
        if "/" in namespace:
            raise not_found(f"{namespace[:200]!r} is not a namespace.")
        visibility = await site.visibility(viewer)
        # Members and administrators: usage is not something a public repository shows.
        if (
            visibility is not None
            and not viewer.is_admin
            and namespace not in visibility.namespaces
        ):
            if not viewer.signed_in:
                raise SignInRequired()
            raise not_found(f"There is no namespace {namespace!r} that you may see.")
        return site.render(
            request,
            viewer,
            "namespace.html",
            {"namespace": namespace, **await usage_charts(site, namespace)},
        )

    return [Route("/n/{namespace}", site.page(namespace_page), methods=["GET"])]
