"""Event delivery history as JSON (issue 16), for administrators (the endpoints are the
server's configuration):

- `GET /events/endpoints?limit=N`: each configured endpoint (url, format, types, tags; never
  its secret) with its last N deliveries (default 20, at most 100), newest first;
- `POST /events/deliveries/<id>/redeliver`: queue a delivery again, due now → 202.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from cangku.api.errors import json_errors
from cangku.auth.access import AccessControl
from cangku.config import EventSettings
from cangku.content.errors import DeliveryUnknown, Denied, RequestInvalid
from cangku.events import delivery
from cangku.registry import Registry

DEFAULT_LIMIT = 20
MAX_LIMIT = 100


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
        raw = request.query_params.get("limit", str(DEFAULT_LIMIT))
        if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
            raise RequestInvalid(f"limit must be 1 to {MAX_LIMIT}, not {raw[:20]!r}")
        found = await delivery.endpoint_history(registry.metadata, settings, int(raw))
        return JSONResponse({"endpoints": found})

    async def redeliver(request: Request) -> Response:
        await admin_only(request)
        raw = request.path_params["id"]
        if not raw.isdigit() or len(raw) > 18:
            raise RequestInvalid(f"a delivery id is a number, not {raw[:20]!r}")
        if not await delivery.redeliver(registry.metadata, int(raw)):
            raise DeliveryUnknown(f"no delivery {raw}", raw)
        return JSONResponse({"id": int(raw), "state": "pending"}, status_code=202)

    return [
        Route("/events/endpoints", json_errors(endpoints), methods=["GET"]),
        Route("/events/deliveries/{id}/redeliver", json_errors(redeliver), methods=["POST"]),
    ]
