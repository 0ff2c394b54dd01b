"""Domain errors as JSON for the /api/v1 endpoints: `{"error": {"code", "message"}}`,
with the same statuses (and authentication headers) as the /v2 API."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from cangku.auth.access import Challenge
from cangku.content.errors import RegistryError, TooManyRequests
from cangku.distribution.errors import STATUS_BY_CODE

Handler = Callable[[Request], Awaitable[Response]]


def json_errors(handler: Handler) -> Handler:
    async def handle(request: Request) -> Response:
        try:
            return await handler(request)
        except RegistryError as error:
            headers = {}
            if isinstance(error, Challenge):
                headers["WWW-Authenticate"] = error.header
            if isinstance(error, TooManyRequests):
                headers["Retry-After"] = str(error.retry_after)
            return JSONResponse(
                {"error": {"code": error.code, "message": error.message}},
                status_code=error.status or STATUS_BY_CODE.get(error.code, 400),
                headers=headers,
            )

    return handle
