"""Usage over time as JSON (issue 17): `GET /usage/history?days=N` (admins) and
`GET /namespaces/<namespace>/usage/history?days=N` (the namespace's members and admins):
`{"namespace": str|null, "days": [{"day", "stored_bytes", "pushes", "pulls"}, ...]}`, the
last N UTC days (1 to 366, default 30), oldest first."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from cangku.api.errors import json_errors
from cangku.auth.access import AccessControl
from cangku.content.errors import Denied, NameInvalid, RequestInvalid
from cangku.content.names import validate_repository_name
from cangku.registry import Registry
from cangku.registry.usage_history import MAX_DAYS, usage_history


def routes(registry: Registry, access: AccessControl | None) -> list[BaseRoute]:
    def days_of(request: Request) -> int:
        text = request.query_params.get("days", "30")
        if not text.isascii() or not text.isdigit() or not 1 <= int(text[:4]) <= MAX_DAYS:
            raise RequestInvalid(f"days is a whole number from 1 to {MAX_DAYS}")
        return int(text)

    async def everything(request: Request) -> Response:
        if access is not None:
            caller = await access.authorize(request, None, None)
            if not caller.principal.is_admin:
                raise Denied("only administrators may see the whole registry's usage")
        days = await usage_history(registry.metadata, None, days_of(request))
        return JSONResponse({"namespace": None, "days": [day.to_json() for day in days]})

    async def namespace(request: Request) -> Response:
        name: str = request.path_params["namespace"]
        validate_repository_name(name)
        if "/" in name:
            raise NameInvalid(f"invalid namespace {name[:300]!r}")
        if access is not None:
            caller = await access.authorize(request, None, None)
            visible = await access.visibility(caller)  # None: an admin
            if visible is not None and name not in visible.namespaces:
                raise Denied("only the namespace's members and administrators see its usage")
        days = await usage_history(registry.metadata, name, days_of(request))
        return JSONResponse({"namespace": name, "days": [day.to_json() for day in days]})

    return [
        Route("/usage/history", json_errors(everything), methods=["GET"]),
        Route("/namespaces/{namespace}/usage/history", json_errors(namespace), methods=["GET"]),
    ]
