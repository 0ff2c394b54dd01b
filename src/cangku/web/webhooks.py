"""The webhook pages (issue 16): `/n/<namespace>/-/webhooks` and `/r/<name>/-/webhooks` list a
scope's webhooks and add one (its secret shown on the page that answers the form, once);
`/webhooks/<id>` shows one with its delivery history (status, latency, response code) and
the "send test event", "redeliver" and "delete" actions. For the scope's owners and
administrators (events/webhooks.py); forms carry the session's CSRF token."""

from __future__ import annotations

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from cangku.config import EventSettings
from cangku.content.errors import RegistryError
from cangku.content.names import validate_repository_name
from cangku.events import records, webhooks
from cangku.events.webhooks import Spec, Webhook
from cangku.web.site import PageError, SignInRequired, Site, Viewer, not_found

HISTORY = 50


def routes(site: Site, settings: EventSettings) -> list[BaseRoute]:
    def may_manage(viewer: Viewer, namespace: str) -> bool:
        return viewer.open_mode or webhooks.may_manage(viewer.principal, namespace)

    def require(viewer: Viewer, namespace: str) -> None:
        if not may_manage(viewer, namespace):
            raise PageError(
                403,
                "Not allowed",
                f"Only the owners of {namespace!r} and administrators manage its webhooks.",
            )

    def scope_of(request: Request) -> tuple[str, str | None, str]:
        """(namespace, repository or None, this page's path)."""
        try:
            if "namespace" in request.path_params:
                namespace = webhooks.validate_namespace(request.path_params["namespace"])
                return namespace, None, f"/n/{namespace}/-/webhooks"
            repository = validate_repository_name(request.path_params["name"])
        except RegistryError:
            raise not_found("There is no such namespace or repository.") from None
        return repository.split("/", 1)[0], repository, f"/r/{repository}/-/webhooks"

    async def render_scope(
        request: Request,
        viewer: Viewer,
        created: tuple[Webhook, str] | None = None,
        error: str | None = None,
        status: int = 200,
    ) -> Response:
        namespace, repository, path = scope_of(request)
        found = await webhooks.listing(site.registry.metadata, namespace, repository)
        return site.render(
            request,
            viewer,
            "webhooks.html",
            {
                "namespace": namespace,
                "repository": repository,
                "scope": repository or namespace,
                "path": path,
                "webhooks": found,
                "types": records.TYPES,
                "formats": webhooks.FORMATS,
                "created": created,
                "error": error,
            },
            status,
        )

    async def scope_page(request: Request, viewer: Viewer) -> Response:
        namespace, _, _ = scope_of(request)
        if not viewer.open_mode and not viewer.signed_in:
            raise SignInRequired()
        require(viewer, namespace)
        return await render_scope(request, viewer)

    async def create(request: Request, viewer: Viewer) -> Response:
        namespace, repository, _ = scope_of(request)
        form = await site.checked_form(request, viewer)
        require(viewer, namespace)
        try:
            spec = _spec(form)
            made = await webhooks.create(
                site.registry.metadata,
                settings,
                namespace=namespace,
                repository=repository,
                spec=spec,
                actor=viewer.name,
            )
        except RegistryError as refused:
            return await render_scope(request, viewer, error=refused.message, status=400)
        # Shown on this answer only (no-store), never again: not a redirect to a page
        # that could show it.
        return await render_scope(request, viewer, created=made, status=201)

    async def one(request: Request, viewer: Viewer) -> Webhook:
        raw = request.path_params["id"]
        found = (
            await webhooks.find(site.registry.metadata, int(raw))
            if raw.isdigit() and len(raw) <= 18
            else None
        )
        if found is None:
            raise not_found("There is no such webhook.")
        require(viewer, found.namespace)
        return found

    async def webhook_page(request: Request, viewer: Viewer) -> Response:
        found = await one(request, viewer)
        history = await webhooks.history(site.registry.metadata, found.key, HISTORY)
        back = (
            f"/r/{found.repository}/-/webhooks"
            if found.repository
            else (f"/n/{found.namespace}/-/webhooks")
        )
        return site.render(
            request,
            viewer,
            "webhook.html",
            {"webhook": found, "deliveries": history, "back": back},
        )

    async def test(request: Request, viewer: Viewer) -> Response:
        await site.checked_form(request, viewer)
        found = await one(request, viewer)
        await webhooks.send_test(site.registry.metadata, found, site.context(request, viewer))
        return site.redirect(request, viewer, f"/webhooks/{found.id}")

    async def redeliver(request: Request, viewer: Viewer) -> Response:
        await site.checked_form(request, viewer)
        found = await one(request, viewer)
        raw = request.path_params["delivery"]
        if not raw.isdigit() or len(raw) > 18:
            raise not_found("There is no such delivery.")
        try:
            await webhooks.redeliver(site.registry.metadata, found.key, int(raw))
        except RegistryError:
            raise not_found("There is no such delivery of this webhook.") from None
        return site.redirect(request, viewer, f"/webhooks/{found.id}")

    async def delete(request: Request, viewer: Viewer) -> Response:
        await site.checked_form(request, viewer)
        found = await one(request, viewer)
        await webhooks.remove(site.registry.metadata, found)
        back = (
            f"/r/{found.repository}/-/webhooks"
            if found.repository
            else (f"/n/{found.namespace}/-/webhooks")
        )
        return site.redirect(request, viewer, back)

    return [
        Route("/n/{namespace}/-/webhooks", site.page(scope_page), methods=["GET"]),
        Route("/n/{namespace}/-/webhooks", site.page(create), methods=["POST"]),
        Route("/r/{name:path}/-/webhooks", site.page(scope_page), methods=["GET"]),
        Route("/r/{name:path}/-/webhooks", site.page(create), methods=["POST"]),
        Route("/webhooks/{id}", site.page(webhook_page), methods=["GET"]),
        Route("/webhooks/{id}/test", site.page(test), methods=["POST"]),
        Route(
            "/webhooks/{id}/deliveries/{delivery}/redeliver",
            site.page(redeliver),
            methods=["POST"],
        ),
        Route("/webhooks/{id}/delete", site.page(delete), methods=["POST"]),
    ]


def _spec(form: FormData) -> Spec:
    """The form as a webhook: `url`, checked `types`, `tags` one pattern a line, `format`.
    Raises RequestInvalid (Spec.check)."""
    url = form.get("url")
    tags = form.get("tags")
    format_ = form.get("format") or "cloudevents"
    lines = (tags if isinstance(tags, str) else "").splitlines()[:100]
    spec = Spec(
        url=url.strip() if isinstance(url, str) else "",
        types=[value for value in form.getlist("types") if isinstance(value, str)][:50],
        tags=[line.strip() for line in lines if line.strip()],
        format=format_ if isinstance(format_, str) else "",
    )
    spec.check()
    return spec
