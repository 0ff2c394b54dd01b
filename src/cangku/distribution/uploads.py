"""`/v2/<name>/blobs/uploads/...`: start, mount, monolithic, chunked, status, finish, cancel."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from cangku.auth.permissions import PULL
from cangku.content.errors import DigestInvalid
from cangku.content.names import validate_repository_name
from cangku.distribution.http import (
    caller_of,
    content_length,
    content_range,
    request_body,
    upload_location,
    upload_range,
)
from cangku.registry import Registry


async def start_upload(request: Request, registry: Registry, name: str) -> Response:
    query = request.query_params
    mount, source = query.get("mount"), query.get("from")
    checked = caller_of(request)
    if mount is not None and source is not None and checked is not None:
        access, caller = checked
        if not await access.may(caller, validate_repository_name(source), PULL):
            source = None  # Cross-repository mount only from what the caller may pull.
    if mount is not None and source is not None:
        mounted = await registry.mount_blob(name, mount, source)
        if mounted is not None:
            return _created(name, str(mounted))
    digest = query.get("digest")
    if digest is not None:
        # OCI dist-spec "Pushing a blob monolithically": POST with ?digest= and the body.
        stored = await registry.upload_blob(
            name, digest, request_body(request), content_length(request)
        )
        return _created(name, str(stored))
    upload_id = await registry.start_upload(name, _owner(request))
    return _accepted(name, upload_id, 0)


def _owner(request: Request) -> str:
    """Whose upload session this is, for the cap on open sessions: the user, or the address."""
    checked = caller_of(request)
    if checked is not None and checked[1].name is not None:
        return checked[1].name
    address = checked[0].client_address(request) if checked is not None else None
    return f"address:{address or (request.client.host if request.client else '-')}"


async def upload_status(
    request: Request, registry: Registry, name: str, upload_id: str
) -> Response:
    size = await registry.upload_status(name, upload_id)
    return _accepted(name, upload_id, size, status=204)


async def append_chunk(request: Request, registry: Registry, name: str, upload_id: str) -> Response:
    size = await registry.append_upload(
        name, upload_id, request_body(request), content_length(request), content_range(request)
    )
    return _accepted(name, upload_id, size)


async def finish_upload(
    request: Request, registry: Registry, name: str, upload_id: str
) -> Response:
    digest = request.query_params.get("digest")
    if digest is None:
        raise DigestInvalid("the digest query parameter is required to finish an upload")
    stored = await registry.finish_upload(
        name,
        upload_id,
        digest,
        request_body(request),
        content_length(request),
        content_range(request),
    )
    return _created(name, str(stored))


async def cancel_upload(
    request: Request, registry: Registry, name: str, upload_id: str
) -> Response:
    await registry.cancel_upload(name, upload_id)
    return Response(b"", status_code=204)


def _created(name: str, digest: str) -> Response:
    return Response(
        b"",
        status_code=201,
        headers={
            "Location": f"/v2/{name}/blobs/{digest}",
            "Docker-Content-Digest": digest,
            "Content-Length": "0",
        },
    )


def _accepted(name: str, upload_id: str, size: int, status: int = 202) -> Response:
    return Response(
        b"",
        status_code=status,
        headers={
            "Location": upload_location(name, upload_id),
            "Docker-Upload-UUID": upload_id,
            "Range": upload_range(size),
            "Content-Length": "0",
        },
    )
