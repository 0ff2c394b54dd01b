"""The one place where domain errors become HTTP responses.

Status and headers come from the error itself (`content/errors.py` is the table); this module
only chooses the body's shape for the surface that answers:

- `"oci"` (/v2 and /auth/token): `{"errors": [{"code", "message", "detail"?}]}`, OCI
  dist-spec "Error Codes";
- `"api"` (/api/v1): `{"error": {"code", "message"}}`.

The pages render their own HTML with `page_status` and `page_title` (web/site.py).
"""

from __future__ import annotations

import json
from typing import Literal

from starlette.responses import Response

from cangku.content.errors import NameInvalid, RegistryError, UploadOutOfOrder

Surface = Literal["oci", "api"]

PAGE_TITLES = {
    403: "Not allowed",
    404: "Not found",
    429: "Too many attempts",
}


def error_body(code: str, message: str, detail: object = None) -> bytes:
    """The OCI error document (dist-spec "Error Codes") for one error, as JSON bytes."""
    error: dict[str, object] = {"code": code, "message": message}
    if detail is not None:
        error["detail"] = detail
    return json.dumps({"errors": [error]}).encode()


def render_error(
    error: RegistryError,
    surface: Surface = "oci",
    *,
    head: bool = False,
    location: str | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    """`error` as a response: `error.status`, `error.headers()` plus `headers` (the caller's
    context, e.g. `Allow` on a 405), and the body of `surface`. `location` is the upload's
    URL, sent with an UploadOutOfOrder so the client resumes there (OCI dist-spec "Pushing a
    blob in chunks"). `head` leaves the body out but keeps its Content-Length (RFC 9110
    §9.3.2)."""
    all_headers = error.headers() | (headers or {})
    if location is not None and isinstance(error, UploadOutOfOrder):
        all_headers["Location"] = location
    if surface == "api":
        body = json.dumps({"error": {"code": error.code, "message": error.message}}).encode()
    else:
        body = error_body(error.code, error.message, error.detail)
    all_headers = {"Content-Length": str(len(body))} | all_headers
    return Response(
        b"" if head else body,
        status_code=error.status,
        headers=all_headers,
        media_type="application/json",
    )


def page_status(error: RegistryError) -> int:
    """The status of the error page for `error`: its own, except that an invalid repository
    name in a page's address is a page that does not exist (404), and a refused credential is
    403: pages authenticate with the session cookie, never with an HTTP challenge, and a 401
    must carry one (RFC 9110 §15.5.2)."""
    if isinstance(error, NameInvalid):
        return 404
    if error.status == 401:
        return 403
    return error.status


def page_title(status: int) -> str:
    """The heading of an error page with this status."""
    return PAGE_TITLES.get(status, "Cannot do that")
