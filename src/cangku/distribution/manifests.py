"""`/v2/<name>/manifests/<reference>`: PUT, GET, HEAD and DELETE by tag or digest."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from cangku.content.errors import ManifestUnknown, PayloadTooLarge, TooManyTags
from cangku.content.manifest import MAX_MANIFEST_BYTES
from cangku.content.mediatypes import is_acceptable, parse_accept
from cangku.distribution.http import (
    client_address,
    content_length,
    request_body,
    request_context,
    warning,
)
from cangku.registry import Registry
from cangku.registry.manifests import MAX_TAGS_PER_PUSH
from cangku.registry.pulls import Reader


async def put_manifest(request: Request, registry: Registry, name: str, reference: str) -> Response:
    declared = content_length(request)
    if declared is not None and declared > MAX_MANIFEST_BYTES:
        raise PayloadTooLarge("manifest is larger than 4 MiB")
    # OCI dist-spec main: PUT by digest may name tags with ?tag= (414 beyond our limit,
    # refused before the body is read).
    extra_tags = request.query_params.getlist("tag")
    if len(extra_tags) > MAX_TAGS_PER_PUSH:
        raise TooManyTags(f"{len(extra_tags)} tags in one push; at most {MAX_TAGS_PER_PUSH}")
    content = await _read_limited(request, MAX_MANIFEST_BYTES)
    pushed = await registry.repository(name).manifests.put(
        reference,
        content,
        request.headers.get("content-type"),
        request_context(request),
        extra_tags=extra_tags,
    )
    headers = {
        "Location": f"/v2/{name}/manifests/{pushed.digest}",
        "Docker-Content-Digest": pushed.digest,
        "Content-Length": "0",
    }
    if pushed.subject:
        headers["OCI-Subject"] = pushed.subject
    response = Response(b"", status_code=201, headers=headers)
    for text in pushed.warnings:
        # OCI dist-spec "Warnings": code 299, agent "-", the text quoted.
        response.headers.append("Warning", warning(text))
    for tag in pushed.tags:
        response.headers.append("OCI-Tag", tag)
    return response


async def get_manifest(request: Request, registry: Registry, name: str, reference: str) -> Response:
    scope = request.scope
    method: str = scope["method"]
    # One pass over the raw headers (ASGI names them in lower case), as Starlette's
    # `getlist("accept")` and `get("user-agent")` would read them, without two scans and
    # their objects: this runs on every manifest GET (docs/performance.md, "Manifest GET
    # against c4986c2"). Clients send one Accept header per media type (docker, skopeo):
    # all of them count; the first User-Agent is the one.
    accept: list[str] = []
    user_agent: str | None = None
    for key, value in scope["headers"]:
        if key == b"accept":
            accept.append(value.decode("latin-1"))
        elif key == b"user-agent" and user_agent is None:
            user_agent = value.decode("latin-1")
    accepted = parse_accept(",".join(accept))
    # Issue 17: this client's GET is a pull, counted by the wrapper the reader installs
    # (registry/pulls.py, CountedManifests), in memory only.
    reader = Reader(
        # Resolved as the access control does: behind one proxy, clients stay apart.
        client_address(request, ""),
        method,
        user_agent if method == "GET" else None,
        accepted,
    )
    manifest = await registry.pulled_manifests(name, reader).get(reference)
    if not is_acceptable(manifest.media_type, accepted):
        raise ManifestUnknown(
            f"the manifest is a {manifest.media_type}, which the Accept header does not allow",
            reference,
        )
    reply = {
        "Docker-Content-Digest": manifest.digest,
        "Content-Length": str(manifest.size),
        "ETag": f'"{manifest.digest}"',
    }
    body = b"" if method == "HEAD" else manifest.content
    response = Response(body, headers=reply, media_type=manifest.media_type)
    for text in manifest.warnings:
        response.headers.append("Warning", warning(text))
    return response


async def delete_manifest(
    request: Request, registry: Registry, name: str, reference: str
) -> Response:
    await registry.repository(name).manifests.delete(reference, request_context(request))
    return Response(b"", status_code=202, headers={"Content-Length": "0"})


async def _read_limited(request: Request, limit: int) -> bytes:
    """Read a small body, refusing it as soon as it grows past `limit` (lying lengths too)."""
    content = bytearray()
    async for chunk in request_body(request):
        content += chunk
        if len(content) > limit:
            raise PayloadTooLarge("manifest is larger than 4 MiB")
    return bytes(content)
