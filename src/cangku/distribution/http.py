"""Small request helpers shared by the /v2 handlers: bodies, lengths, ranges, locations."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from urllib.parse import quote

from starlette.requests import ClientDisconnect, Request

from cangku.auth.access import AccessControl, Caller
from cangku.content.errors import BlobUploadInvalid, PaginationNumberInvalid, SizeInvalid
from cangku.registry.context import REQUEST_ID, RequestContext
from cangku.storage.base import UploadAborted

# Docker Registry HTTP API V2, "API Version Check"; the router adds it to every /v2 answer.
API_VERSION_RAW = (b"docker-distribution-api-version", b"registry/2.0")
CONTENT_RANGE = re.compile(r"^(?:bytes[ =])?(\d{1,19})-(\d{1,19})$")
DIGITS = re.compile(r"^\d{1,19}$")


async def request_body(request: Request) -> AsyncIterator[bytes]:
    """The body as it arrives; a client that hangs up mid-body aborts the upload."""
    try:
        async for chunk in request.stream():
            if chunk:
                yield chunk
    except ClientDisconnect:
        raise UploadAborted("the client disconnected during the upload") from None


def request_path(request: Request) -> str:
    """The request's path, percent-encoded, for a `Link` header pointing back at this route
    (RFC 8288; OCI dist-spec "Listing Tags"). From the ASGI scope: `request.url` would build
    and parse a whole URL (~13 µs, a tenth of a listing page's CPU) only to read its path."""
    return quote(request.scope["path"])


def content_length(request: Request) -> int | None:
    value = request.headers.get("content-length")
    if value is None:
        return None
    if not DIGITS.fullmatch(value.strip()):
        raise SizeInvalid("invalid Content-Length")
    return int(value)


def content_range(request: Request) -> tuple[int, int] | None:
    """A chunk's `Content-Range: start-end` (inclusive), as clients send it on PATCH."""
    value = request.headers.get("content-range")
    if value is None:
        return None
    match = CONTENT_RANGE.fullmatch(value.strip())
    if not match:
        raise BlobUploadInvalid(f"invalid Content-Range {value[:100]!r}")
    start, end = int(match[1]), int(match[2])
    if end < start:
        raise BlobUploadInvalid(f"invalid Content-Range {value[:100]!r}")
    return start, end


def page_size(request: Request) -> int | None:
    value = request.query_params.get("n")
    if value is None or value == "":
        return None
    if not DIGITS.fullmatch(value):
        raise PaginationNumberInvalid(f"n must be a non-negative integer, not {value[:50]!r}")
    return int(value)


def warning(text: str) -> str:
    """A `Warning: 299 - "text"` value: OCI dist-spec "Warnings" (at most 4096 bytes; clients
    only show them), for where we answer in a degraded way rather than refuse."""
    quoted = text.replace("\\", "").replace('"', "'").replace("\r", " ").replace("\n", " ")
    quoted = quoted.encode("ascii", "replace").decode()
    return f'299 - "{quoted[:4000]}"'


def upload_location(name: str, upload_id: str) -> str:
    return f"/v2/{name}/blobs/uploads/{upload_id}"


def upload_range(size: int) -> str:
    # As the reference registry: "0-0" for an empty upload.
    return f"0-{max(size - 1, 0)}"


def caller_of(request: Request) -> tuple[AccessControl, Caller] | None:
    """The access control and the caller; None in the no-authentication mode."""
    access: AccessControl | None = request.scope.get("cangku.access")
    caller: Caller | None = request.scope.get("cangku.caller")
    if access is None or caller is None:
        return None
    return access, caller


def request_context(request: Request) -> RequestContext:
    """Who sends this request, for the mutating use cases: the authenticated user (None
    when anonymous or without authentication), the request id the access log carries, and
    the client address (behind trusted proxies, the one they forwarded for)."""
    checked = caller_of(request)
    caller = None if checked is None else checked[1].name
    return RequestContext(
        caller=caller, request_id=REQUEST_ID.get(), address=client_address(request)
    )


def client_address(request: Request, unknown: str = "-") -> str:
    """The client's address as the access control resolves it: behind trusted proxies the
    one they forwarded for (auth/access.py), else the peer; `unknown` without a peer."""
    scope = request.scope
    access: AccessControl | None = scope.get("cangku.access")
    if access is not None and scope.get("cangku.caller") is not None:
        return access.client_address(request)
    # `request.client` would build an Address tuple (twice) to read its host.
    client = scope.get("client")
    return client[0] if client else unknown
