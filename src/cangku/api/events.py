"""Events as JSON (issue 16).

For administrators (the server-wide endpoints are the server's configuration):
- `GET /events/endpoints?limit=N`: each configured endpoint (url, format, types, tags; never
  its secret) with its last N deliveries (default 20, at most 100), newest first;
- `POST /events/deliveries/<id>/redeliver`: queue a delivery again, due now → 202.

Webhooks of a namespace or a repository, for their owners and administrators
(events/webhooks.py; others get 403 DENIED):
- `GET|POST /namespaces/<namespace>/webhooks`, `GET|POST /repositories/<name>/webhooks`:
  list them (never a secret); create one from `{"url", "types", "tags", "format"}` → 201 with
  its `secret`, the only time it is shown;
- `GET /webhooks/<id>?limit=N`: one with its last N deliveries; `DELETE /webhooks/<id>` → 204;
- `POST /webhooks/<id>/test` → 202: send it an `io.cangku.test` event;
- `POST /webhooks/<id>/deliveries/<delivery>/redeliver` → 202.
"""

from __future__ import annotations

import json
import re

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from cangku.api.errors import json_errors
from cangku.auth.access import AccessControl
from cangku.auth.permissions import DELETE
from cangku.config import EventSettings
from cangku.content.errors import (
    DeliveryUnknown,
    Denied,
    RequestInvalid,
    SizeInvalid,
    WebhookUnknown,
)
from cangku.content.names import validate_repository_name
from cangku.events import delivery, webhooks
from cangku.events.webhooks import Spec, Webhook
from cangku.registry import Registry
from cangku.registry.context import REQUEST_ID, RequestContext

DEFAULT_LIMIT = 20
MAX_LIMIT = 100
MAX_JSON_BODY = 8192
ID = re.compile(r"[0-9]{1,18}")


def routes(
    registry: Registry, access: AccessControl | None, settings: EventSettings
) -> list[BaseRoute]:
    async def admin_only(request: Request) -> None:
        if access is None:
            return
        caller = await access.authorize(request, None, None)
        if not caller.principal.is_admin:
            raise Denied("only administrators may see event deliveries")

    async def endpoints(request: Request) -> Response:
        await admin_only(request)
        found = await delivery.endpoint_history(registry.metadata, settings, _limit(request))
        return JSONResponse({"endpoints": found})

    async def redeliver(request: Request) -> Response:
        await admin_only(request)
        raw = _id(request.path_params["id"], "a delivery id")
        if not await delivery.redeliver(registry.metadata, raw):
            raise DeliveryUnknown(f"no delivery {raw}", str(raw))
        return JSONResponse({"id": raw, "state": "pending"}, status_code=202)

    async def manager(request: Request, namespace: str, repository: str | None) -> str | None:
        """The caller's name if they may manage the webhooks of this namespace or
        repository (its owners, admins); raise a challenge or Denied if not."""
        if access is None:
            return None
        caller = await access.authorize(request, None, None)
        if repository is not None:
            allowed = await access.may(caller, repository, DELETE)
        else:
            # A bearer token grants actions on repositories, never on a whole namespace.
            allowed = caller.token is None and webhooks.may_manage(caller.principal, namespace)
        if not allowed:
            raise Denied(
                "only the owners of the namespace and administrators manage its webhooks",
                {"namespace": namespace},
            )
        return caller.name

    async def scoped(request: Request) -> Response:
        if "namespace" in request.path_params:
            namespace = webhooks.validate_namespace(request.path_params["namespace"])
            repository = None
        else:
            repository = validate_repository_name(request.path_params["name"])
            namespace = repository.split("/", 1)[0]
        actor = await manager(request, namespace, repository)
        if request.method == "GET":
            found = await webhooks.listing(registry.metadata, namespace, repository)
            return JSONResponse({"webhooks": [hook.to_json() for hook in found]})
        spec = Spec.parse(await _read_json(request))
        webhook, secret = await webhooks.create(
            registry.metadata,
            settings,
            namespace=namespace,
            repository=repository,
            spec=spec,
            actor=actor,
        )
        return JSONResponse({**webhook.to_json(), "secret": secret}, status_code=201)

    async def one(request: Request) -> tuple[Webhook, str | None]:
        number = _id(request.path_params["id"], "a webhook id")
        webhook = await webhooks.find(registry.metadata, number)
        if webhook is None:
            # Existence is no secret worth a second rule: ids are sequential.
            raise WebhookUnknown(f"no webhook {number}", str(number))
        return webhook, await manager(request, webhook.namespace, webhook.repository)

    async def webhook(request: Request) -> Response:
        found, _ = await one(request)
        if request.method == "DELETE":
            await webhooks.remove(registry.metadata, found)
            return Response(status_code=204)
        history = await webhooks.history(registry.metadata, found.key, _limit(request))
        return JSONResponse({**found.to_json(), "deliveries": history})

    async def test(request: Request) -> Response:
        found, actor = await one(request)
        context = RequestContext(caller=actor, request_id=REQUEST_ID.get())
        delivery_id = await webhooks.send_test(registry.metadata, found, context)
        return JSONResponse({"delivery": delivery_id, "state": "pending"}, status_code=202)

    async def redeliver_one(request: Request) -> Response:
        found, _ = await one(request)
        delivery_id = _id(request.path_params["delivery"], "a delivery id")
        await webhooks.redeliver(registry.metadata, found.key, delivery_id)
        return JSONResponse({"id": delivery_id, "state": "pending"}, status_code=202)

    return [
        Route("/events/endpoints", json_errors(endpoints), methods=["GET"]),
        Route("/events/deliveries/{id}/redeliver", json_errors(redeliver), methods=["POST"]),
        Route("/namespaces/{namespace}/webhooks", json_errors(scoped), methods=["GET", "POST"]),
        Route("/repositories/{name:path}/webhooks", json_errors(scoped), methods=["GET", "POST"]),
        Route("/webhooks/{id}", json_errors(webhook), methods=["GET", "DELETE"]),
        Route("/webhooks/{id}/test", json_errors(test), methods=["POST"]),
        Route(
            "/webhooks/{id}/deliveries/{delivery}/redeliver",
            json_errors(redeliver_one),
            methods=["POST"],
        ),
    ]


def _limit(request: Request) -> int:
    raw = request.query_params.get("limit", str(DEFAULT_LIMIT))
    if not raw.isdigit() or len(raw) > 3 or not 1 <= int(raw) <= MAX_LIMIT:
        raise RequestInvalid(f"limit must be 1 to {MAX_LIMIT}, not {raw[:20]!r}")
    return int(raw)


def _id(raw: str, what: str) -> int:
    if not ID.fullmatch(raw):
        raise RequestInvalid(f"{what} is a number, not {raw[:20]!r}")
    return int(raw)


async def _read_json(request: Request) -> object:
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_JSON_BODY:
            raise SizeInvalid("the request body is larger than 8 KiB")
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        raise RequestInvalid("the request body must be JSON") from None
