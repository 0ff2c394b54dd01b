"""Domain errors rendered as /v2 responses: status, code and the headers the spec asks for."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from starlette.requests import Request
from starlette.responses import Response

from cangku.api.errors import json_errors
from cangku.auth.errors import Challenge
from cangku.content.errors import (
    BlobUploadUnknown,
    RangeInvalid,
    RegistryError,
    TooManyRequests,
    TooManyTags,
    UploadOutOfOrder,
)
from cangku.http_errors import render_error


def test_every_429_says_when_to_come_back() -> None:
    response = render_error(TooManyRequests("slow down", retry_after=6.2))
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "7"
    assert json.loads(bytes(response.body))["errors"][0]["code"] == "TOOMANYREQUESTS"


def test_unsatisfiable_range_is_416_size_invalid_with_the_size() -> None:
    response = render_error(RangeInvalid("range not satisfiable", 100))
    assert response.status_code == 416
    assert response.headers["Content-Range"] == "bytes */100"
    assert json.loads(bytes(response.body))["errors"][0]["code"] == "SIZE_INVALID"


def test_too_many_tags_is_414() -> None:
    response = render_error(TooManyTags("too many tags"))
    assert response.status_code == 414


async def _api_response(error: Exception) -> Response:
    async def failing(request: Request) -> Response:
        raise error

    scope = {"type": "http", "method": "GET", "path": "/api/v1/x", "headers": []}
    return await json_errors(failing)(Request(scope))


@pytest.mark.parametrize(
    ("error", "status", "header", "value"),
    [
        (TooManyRequests("slow down", retry_after=2), 429, "Retry-After", "2"),
        (RangeInvalid("range not satisfiable", 100), 416, "Content-Range", "bytes */100"),
        (UploadOutOfOrder("chunk out of order", 10), 416, "Range", "0-9"),
        (Challenge("sign in", 'Bearer realm="r"'), 401, "WWW-Authenticate", 'Bearer realm="r"'),
    ],
)
async def test_v2_and_api_answer_an_error_alike(
    error: RegistryError, status: int, header: str, value: str
) -> None:
    """One table: /api/v1 sends the status and headers /v2 sends, only the body differs."""
    oci = render_error(error)
    api = await _api_response(error)
    for response in (oci, api):
        assert response.status_code == status
        assert response.headers[header] == value
    assert json.loads(bytes(oci.body))["errors"][0]["code"] == error.code
    assert json.loads(bytes(api.body))["error"] == {"code": error.code, "message": error.message}


def test_an_upload_error_says_where_to_resume_only_when_out_of_order() -> None:
    resume = render_error(UploadOutOfOrder("out of order", 5), location="/v2/a/blobs/uploads/u")
    assert resume.headers["Location"] == "/v2/a/blobs/uploads/u"
    unknown = render_error(BlobUploadUnknown("no such upload"), location="/v2/a/blobs/uploads/u")
    assert unknown.status_code == 404 and "Location" not in unknown.headers


def test_the_application_does_not_import_the_server() -> None:
    """The ASGI extension's name lives in cangku/asgi.py: the app and the blob handler do not
    load uvicorn's internals (cangku/server.py) to learn it."""
    code = (
        "import sys, cangku.app, cangku.distribution.blobs, cangku.observability;"
        "loaded = [m for m in sys.modules if m == 'cangku.server' or m.startswith('uvicorn')];"
        "print(loaded); sys.exit(1 if loaded else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
