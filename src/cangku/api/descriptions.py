"""A repository's description, overview and pull statistics as JSON (issue 17).

- `GET /repositories/<name>/description`: for whoever may pull it.
- `PUT /repositories/<name>/description` `{"description": str|null, "overview": str|null}`:
  for its owners (who may delete in it) and admins; both texts are replaced, null or ""
  unsets one. 400 REQUEST_INVALID for a description over 100 characters or not one line,
  an overview over 25,000 characters, or a body that is not such JSON (at most 128 KiB).
- `GET /repositories/<name>/pulls`: pulls in total, per tag and per manifest digest, each
  with `last_pulled_at` (Unix seconds).
- `GET /repositories/<name>/retention`: the retention dry run (registry/retention.py): the
  policy that applies, the tags it would delete and keep, each with its reasons.
- `PUT /repositories/<name>/retention` with a policy object (or `null` to remove the
  repository's own policy): for its owners; 400 REQUEST_INVALID names a bad rule.
"""

from __future__ import annotations

import json

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from cangku.api.errors import json_errors
from cangku.auth.access import AccessControl
from cangku.auth.permissions import DELETE, PULL
from cangku.content.errors import RequestInvalid, SizeInvalid
from cangku.content.names import validate_repository_name
from cangku.registry import Registry
from cangku.registry.descriptions import (
    clean_description,
    clean_overview,
    describe,
    set_description,
)
from cangku.registry.retention import RetentionPolicy, plan_retention, set_retention_policy

MAX_DESCRIPTION_BODY = 128 * 1024


def routes(registry: Registry, access: AccessControl | None) -> list[BaseRoute]:
    async def description(request: Request) -> Response:
        name = validate_repository_name(request.path_params["name"])
        if request.method == "GET":
            if access is not None:
                await access.authorize(request, name, PULL)
            return JSONResponse((await describe(registry, name)).to_json())
        actor = None
        if access is not None:
            caller = await access.authorize(request, name, DELETE)
            actor = caller.principal.name
        document = await _read_json(request)
        if not isinstance(document, dict) or not set(document) <= {"description", "overview"}:
            raise RequestInvalid('send {"description": "...", "overview": "..."}')
        stored = await set_description(
            registry,
            name,
            clean_description(document.get("description")),
            clean_overview(document.get("overview")),
            actor,
        )
        return JSONResponse(stored.to_json())

    async def pulls(request: Request) -> Response:
        name = validate_repository_name(request.path_params["name"])
        if access is not None:
            await access.authorize(request, name, PULL)
        await describe(registry, name)  # NAME_UNKNOWN for a repository that does not exist
        return JSONResponse((await registry.pulls.repository(name)).to_json())

    async def retention(request: Request) -> Response:
        name = validate_repository_name(request.path_params["name"])
        if request.method == "GET":
            if access is not None:
                await access.authorize(request, name, PULL)
        else:
            if access is not None:
                await access.authorize(request, name, DELETE)
            document = await _read_json(request)
            await describe(registry, name)  # NAME_UNKNOWN for a repository that does not exist
            policy = None if document is None else RetentionPolicy.from_json(document)
            await set_retention_policy(registry.metadata, "repository", name, policy)
        return JSONResponse((await plan_retention(registry.metadata, name)).to_json())

    return [
        Route(
            "/repositories/{name:path}/retention", json_errors(retention), methods=["GET", "PUT"]
        ),
        Route(
            "/repositories/{name:path}/description",
            json_errors(description),
            methods=["GET", "PUT"],
        ),
        Route("/repositories/{name:path}/pulls", json_errors(pulls), methods=["GET"]),
    ]


async def _read_json(request: Request) -> object:
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_DESCRIPTION_BODY:
            raise SizeInvalid("the request body is larger than 128 KiB")
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        raise RequestInvalid("the request body must be JSON") from None
