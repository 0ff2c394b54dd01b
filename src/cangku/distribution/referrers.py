"""`GET /v2/<name>/referrers/<digest>`: manifests whose subject is the digest (OCI 1.1)."""

from __future__ import annotations

import json
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import Response

from cangku.content.mediatypes import OCI_INDEX
from cangku.distribution.http import request_path, warning
from cangku.registry import Registry

# Clients refuse larger indexes (oras-go, containerd: 4 MiB), so no page is larger.
MAX_INDEX_BYTES = 4 * 1024 * 1024
_PREFIX = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []})[:-2].encode()
_SUFFIX = b"]}"


async def list_referrers(request: Request, registry: Registry, name: str, digest: str) -> Response:
    """OCI dist-spec "Listing Referrers": an image index of the referrers' descriptors, in
    digest order, paged with `Link: <…?last=DIGEST>; rel="next"` so that no response exceeds
    4 MiB; `?artifactType=` filters (announced by `OCI-Filters-Applied`)."""
    artifact_type = request.query_params.get("artifactType")
    page = await registry.repository(name).referrers.page(
        digest,
        artifact_type,
        last=request.query_params.get("last"),
        max_bytes=MAX_INDEX_BYTES - len(_PREFIX) - len(_SUFFIX),
    )
    # Serialized as the page was measured: descriptors by json.dumps, joined by ", ".
    body = (
        _PREFIX
        + ", ".join(json.dumps(referrer.descriptor()) for referrer in page.referrers).encode()
        + _SUFFIX
    )
    headers = {"OCI-Filters-Applied": "artifactType"} if artifact_type is not None else {}
    if page.next_last is not None:
        query = {"last": page.next_last}
        if artifact_type is not None:
            query["artifactType"] = artifact_type
        headers["Link"] = f'<{request_path(request)}?{urlencode(query)}>; rel="next"'
    if page.trimmed:
        headers["Warning"] = warning(
            f"annotations left out of {', '.join(page.trimmed[:3])}: larger than a page"
        )
    # Always 200, also for an unknown subject: an empty index says "no referrers".
    return Response(body, media_type=OCI_INDEX, headers=headers)
