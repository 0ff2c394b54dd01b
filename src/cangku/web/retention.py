"""The retention page (issue 17): `/r/<name>/-/retention` shows the policy that applies and
the dry run — every tag it would delete and why — and lets owners set the repository's own
policy. The real run goes with garbage collection (docs/retention.md)."""

from __future__ import annotations

from collections.abc import Callable

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from cangku.auth.permissions import DELETE
from cangku.content.errors import RegistryError
from cangku.content.names import validate_repository_name
from cangku.content.units import format_duration, parse_duration
from cangku.registry.descriptions import describe
from cangku.registry.retention import RetentionPolicy, plan_retention, set_retention_policy
from cangku.web.site import PageError, Site, Viewer, not_found

FIELDS = ("keep_pushed", "keep_pulled", "keep_patches", "keep_minors")
DURATIONS = ("keep_pushed_within", "keep_pulled_within")


def routes(site: Site, repository_url: Callable[..., str]) -> list[BaseRoute]:
    def repository_name(request: Request) -> str:
        name: str = request.path_params["name"]
        try:
            return validate_repository_name(name)
        except RegistryError:
            raise not_found(f"{name[:200]!r} is not a repository name.") from None

    async def page(request: Request, viewer: Viewer) -> Response:
        name = repository_name(request)
        actions = await site.require_visible(viewer, name)
        await describe(site.registry, name)  # 404 for a repository that does not exist
        plan = await plan_retention(site.registry.metadata, name)
        own = plan.policy if plan.scope == "repository" else RetentionPolicy()
        return site.render(
            request,
            viewer,
            "retention.html",
            {
                "name": name,
                "plan": plan,
                "own": own,
                "durations": {
                    field: format_duration(value) if (value := getattr(own, field)) else ""
                    for field in DURATIONS
                },
                "may_change": DELETE in actions,
                "repository_url": repository_url,
            },
        )

    async def change(request: Request, viewer: Viewer) -> Response:
        name = repository_name(request)
        form = await site.checked_form(request, viewer)
        await site.require(viewer, name, DELETE)
        await describe(site.registry, name)
        policy = None
        if form.get("remove") != "on":
            try:
                policy = RetentionPolicy.from_json(_document(form))
            except (RegistryError, ValueError) as error:
                message = error.message if isinstance(error, RegistryError) else str(error)
                raise PageError(400, "Cannot save the policy", message) from None
            if not policy.has_rules:
                policy = None
        await set_retention_policy(site.registry.metadata, "repository", name, policy)
        return site.redirect(request, viewer, repository_url(name, "retention"))

    return [
        Route("/r/{name:path}/-/retention", site.page(page), methods=["GET"]),
        Route("/r/{name:path}/-/retention", site.page(change), methods=["POST"]),
    ]


def _document(form: FormData) -> dict[str, object]:
    """The form's fields as the policy's JSON: empty fields are unset rules."""
    document: dict[str, object] = {}
    patterns = form.get("keep_tags")
    if isinstance(patterns, str) and patterns.strip():
        document["keep_tags"] = [line.strip() for line in patterns.splitlines() if line.strip()]
    for field in FIELDS:
        value = form.get(field)
        if isinstance(value, str) and value.strip():
            if not value.strip().isdigit() or len(value.strip()) > 9:
                raise ValueError(f"{field} is a whole number")
            document[field] = int(value.strip())
    for field in DURATIONS:
        value = form.get(field)
        if isinstance(value, str) and value.strip():
            document[field] = parse_duration(value.strip()[:50])
    return document
