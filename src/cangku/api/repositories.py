"""Repository facts as JSON: tag history, the version tree, visibility."""

from __future__ import annotations

import json
import re

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from cangku.api.errors import json_errors
from cangku.auth.access import AccessControl
from cangku.auth.accounts import Accounts
from cangku.auth.permissions import DELETE, PULL, PUSH
from cangku.content.errors import RequestInvalid, SizeInvalid
from cangku.content.names import validate_repository_name
from cangku.registry import Registry
from cangku.registry.context import REQUEST_ID, RequestContext
from cangku.registry.tags import HISTORY_PAGE, VERSIONS_PAGE

MAX_JSON_BODY = 4096
# Pages of a tag's history and of the version tree: bounded, so that a repository with tens of
# thousands of versions answers as fast as a small one.
MAX_PAGE = 1000
# At most 9 digits: a page size or an id, never a number too large for the database.
DIGITS = re.compile(r"[0-9]{1,9}")


def routes(registry: Registry, access: AccessControl | None) -> list[BaseRoute]:
    async def may_pull(request: Request) -> None:
        """The same rule as /v2: pulling a repository means seeing its tags and history."""
        if access is not None:
            await access.authorize(request, request.path_params["name"], PULL)

    async def tag_history(request: Request) -> Response:
        """Newest first, `?n=` (1-1000, default 100) at a time; `?before=<id>` continues
        where `next_before` of the previous page says (null on the last page)."""
        name, tag = request.path_params["name"], request.path_params["tag"]
        await may_pull(request)
        before = request.query_params.get("before")
        if before is not None and not DIGITS.fullmatch(before):
            raise RequestInvalid(f"before must be a change id, not {before[:50]!r}")
        changes, next_before = await registry.repository(name).tags.history_page(
            tag, _page_size(request, HISTORY_PAGE), int(before) if before else None
        )
        return JSONResponse(
            {
                "repository": name,
                "tag": tag,
                "history": [change.to_json() for change in changes],
                "next_before": next_before,
            }
        )

    async def release(request: Request) -> Response:
        """POST: hand a client-managed floating tag back to the floating-tag policy; for
        those who may push to the repository (docs/tags.md, "Mirroring and syncing")."""
        name, tag = request.path_params["name"], request.path_params["tag"]
        actor = None
        if access is not None:
            actor = (await access.authorize(request, name, PUSH)).name
        context = RequestContext(caller=actor, request_id=REQUEST_ID.get())
        follows = await registry.repository(name).tags.release(tag, context)
        return JSONResponse({"repository": name, "tag": tag, "follows": follows})

    accounts = access.accounts if access is not None else Accounts(registry.metadata)

    async def visibility(request: Request) -> Response:
        """GET: whether anyone may pull. PUT {"public": true|false}: for those who may delete
        in the repository (its owners) and admins."""
        name = validate_repository_name(request.path_params["name"])
        if request.method == "GET":
            await may_pull(request)
        else:
            if access is not None:
                await access.authorize(request, name, DELETE)
            public = _public_flag(await _read_json(request))
            await accounts.set_public(name, public)
        return JSONResponse({"repository": name, "public": await accounts.is_public(name)})

    async def versions(request: Request) -> Response:
        """Highest first, `?n=` (1-1000, default 100) versions at a time; `?last=<tag>`
        continues where `next_last` of the previous page says (null on the last page)."""
        await may_pull(request)
        tree = await registry.repository(request.path_params["name"]).tags.version_tree(
            _page_size(request, VERSIONS_PAGE), request.query_params.get("last")
        )
        return JSONResponse(tree.to_json())

    return [
        Route(
            "/repositories/{name:path}/tags/{tag}/history",
            json_errors(tag_history),
            methods=["GET"],
        ),
        Route(
            "/repositories/{name:path}/tags/{tag}/release",
            json_errors(release),
            methods=["POST"],
        ),
        Route("/repositories/{name:path}/versions", json_errors(versions), methods=["GET"]),
        Route(
            "/repositories/{name:path}/visibility",
            json_errors(visibility),
            methods=["GET", "PUT"],
        ),
    ]


async def _read_json(request: Request) -> object:
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_JSON_BODY:
            raise SizeInvalid("the request body is larger than 4 KiB")
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        raise RequestInvalid("the request body must be JSON") from None


def _page_size(request: Request, default: int) -> int:
    value = request.query_params.get("n")
    if value is None:
        return default
    if not DIGITS.fullmatch(value) or not 1 <= int(value) <= MAX_PAGE:
        raise RequestInvalid(f"n must be a whole number from 1 to {MAX_PAGE}, not {value[:50]!r}")
    return int(value)


def _public_flag(document: object) -> bool:
    flag = document.get("public") if isinstance(document, dict) else None
    if not isinstance(flag, bool):
        raise RequestInvalid('send {"public": true} or {"public": false}')
    return flag
