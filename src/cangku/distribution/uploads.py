"""`/v2/<name>/blobs/uploads/...`: start, mount, monolithic, chunked, status, finish, cancel."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from cangku.auth.permissions import PULL
from cangku.content.digest import Digest
from cangku.content.errors import BlobUploadInvalid, DigestInvalid, NameInvalid, UploadOutOfOrder
from cangku.content.names import validate_repository_name
from cangku.distribution.http import (
    caller_of,
    content_length,
    content_range,
    request_body,
    request_context,
    upload_location,
    upload_range,
    warning,
)
from cangku.registry import Registry

# OCI dist-spec "Pushing a blob in chunks": the smallest chunk we ask clients for (only the
# last chunk may be shorter). Our storage takes chunks of any size; 1 byte says so.
CHUNK_MIN_LENGTH = 1


def wanted_access(request: Request) -> list[tuple[str, str]]:
    """For a mount (`POST …/uploads/?mount=&from=`): pull on `from`, which the challenge must
    name so that a client following it gets a token that can mount (issue 12, item 3)."""
    source = request.query_params.get("from")
    if request.query_params.get("mount") is None or not source:
        return []
    try:
        return [(validate_repository_name(source), PULL)]
    except NameInvalid:
        return []  # The handler refuses it with NAME_INVALID.


async def start_upload(request: Request, registry: Registry, name: str) -> Response:
    query = request.query_params
    mount, source = query.get("mount"), query.get("from")
    if mount is not None:
        mounted = await _mount(request, registry, name, mount, source)
        if mounted is not None:
            return _created(name, str(mounted))
    digest = query.get("digest")
    if digest is not None:
        # OCI dist-spec "Pushing a blob monolithically": POST with ?digest= and the body.
        stored = await registry.repository(name).blobs.upload(
            digest, request_body(request), content_length(request), request_context(request)
        )
        return _created(name, str(stored))
    upload_id = await registry.repository(name).uploads.start(
        request_context(request), query.get("digest-algorithm") or "sha256"
    )
    response = _accepted(name, upload_id, 0)
    response.headers["OCI-Chunk-Min-Length"] = str(CHUNK_MIN_LENGTH)
    if mount is not None and (source or registry.automatic_mount):
        # The spec's answer to a mount that cannot be done is an upload session; say why.
        response.headers["Warning"] = warning(
            f"blob {mount} was not mounted: no repository you may pull holds it; upload it"
        )
    return response


async def _mount(
    request: Request, registry: Registry, name: str, mount: str, source: str | None
) -> Digest | None:
    """OCI dist-spec "Mounting a blob from another repository": from `source`, or without
    it (with `automatic_mount` on) from any repository holding the blob that the caller may
    pull. None when it cannot be mounted (the client then uploads)."""
    checked = caller_of(request)
    if source:
        sources = [validate_repository_name(source)]
    elif registry.automatic_mount:
        sources = await registry.repositories_holding(mount)
    else:
        return None  # As the conformance suite expects with automatic mounting off.
    blobs, context = registry.repository(name).blobs, request_context(request)
    for candidate in sources:
        if checked is not None and not await checked[0].may(checked[1], candidate, PULL):
            continue  # Only from what the caller may pull.
        mounted = await blobs.mount(mount, candidate, context)
        if mounted is not None:
            return mounted
    return None


async def upload_status(
    request: Request, registry: Registry, name: str, upload_id: str
) -> Response:
    size = await registry.repository(name).uploads.status(upload_id)
    return _accepted(name, upload_id, size, status=204)


async def append_chunk(request: Request, registry: Registry, name: str, upload_id: str) -> Response:
    chunk = await _chunk_range(request, registry, name, upload_id)
    size = await registry.repository(name).uploads.append(
        upload_id, request_body(request), content_length(request), chunk, request_context(request)
    )
    return _accepted(name, upload_id, size)


async def finish_upload(
    request: Request, registry: Registry, name: str, upload_id: str
) -> Response:
    digest = request.query_params.get("digest")
    if digest is None:
        raise DigestInvalid("the digest query parameter is required to finish an upload")
    chunk = await _chunk_range(request, registry, name, upload_id)
    stored = await registry.repository(name).uploads.finish(
        upload_id,
        digest,
        request_body(request),
        content_length(request),
        chunk,
        request_context(request),
    )
    return _created(name, str(stored))


async def _chunk_range(
    request: Request, registry: Registry, name: str, upload_id: str
) -> tuple[int, int] | None:
    """The chunk's Content-Range; one we cannot read is a range we cannot satisfy: 416 with
    the Range received so far, as for a chunk out of order (OCI dist-spec, RFC 9110 §15.5.17)."""
    try:
        return content_range(request)
    except BlobUploadInvalid as error:
        size = await registry.repository(name).uploads.status(upload_id)
        raise UploadOutOfOrder(error.message, size) from None


async def cancel_upload(
    request: Request, registry: Registry, name: str, upload_id: str
) -> Response:
    await registry.repository(name).uploads.cancel(upload_id, request_context(request))
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
