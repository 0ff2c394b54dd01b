"""The one place where domain errors become HTTP responses (OCI error JSON)."""

from __future__ import annotations

import json

from starlette.responses import Response

from cangku.content.errors import (
    RangeInvalid,
    RegistryError,
    TooManyRequests,
    UploadOutOfOrder,
)

STATUS_BY_CODE = {
    "BLOB_UNKNOWN": 404,
    "BLOB_UPLOAD_INVALID": 400,
    "BLOB_UPLOAD_UNKNOWN": 404,
    "DIGEST_INVALID": 400,
    "MANIFEST_BLOB_UNKNOWN": 400,
    "MANIFEST_INVALID": 400,
    "MANIFEST_UNKNOWN": 404,
    "NAME_INVALID": 400,
    "NAME_UNKNOWN": 404,
    "SIZE_INVALID": 400,
    "UNAUTHORIZED": 401,
    "DENIED": 403,
    "UNSUPPORTED": 405,
    "TOOMANYREQUESTS": 429,
    "PAGINATION_NUMBER_INVALID": 400,
}


def error_body(code: str, message: str, detail: object = None) -> bytes:
    error: dict[str, object] = {"code": code, "message": message}
    if detail is not None:
        error["detail"] = detail
    return json.dumps({"errors": [error]}).encode()


def error_response(
    code: str,
    message: str,
    *,
    status: int | None = None,
    detail: object = None,
    headers: dict[str, str] | None = None,
    head: bool = False,
) -> Response:
    body = error_body(code, message, detail)
    all_headers = {"Content-Length": str(len(body))} | (headers or {})
    return Response(
        b"" if head else body,
        status_code=status or STATUS_BY_CODE.get(code, 400),
        headers=all_headers,
        media_type="application/json",
    )


def registry_error_response(
    error: RegistryError,
    *,
    location: str | None = None,
    head: bool = False,
    headers: dict[str, str] | None = None,
) -> Response:
    status = error.status
    headers = dict(headers or {})
    if isinstance(error, UploadOutOfOrder):
        # OCI dist-spec: an out-of-order chunk is 416 with the range received so far.
        headers["Range"] = f"0-{max(error.current_size - 1, 0)}"
        if location:
            headers["Location"] = location
    elif isinstance(error, RangeInvalid):
        headers["Content-Range"] = f"bytes */{error.blob_size}"
    elif isinstance(error, TooManyRequests):
        # OCI dist-spec main: a 429 SHOULD say when to come back (RFC 6585 §4).
        headers.setdefault("Retry-After", str(error.retry_after))
    return error_response(
        error.code, error.message, status=status, detail=error.detail, headers=headers, head=head
    )
