"""`GET /v2/<name>/referrers/<digest>`: manifests whose subject is the digest (OCI 1.1)."""

from __future__ import annotations

import json

from starlette.requests import Request
from starlette.responses import Response

from cangku.content.mediatypes import OCI_INDEX
from cangku.registry import Registry


async def list_referrers(request: Request, registry: Registry, name: str, digest: str) -> Response:
    artifact_type = request.query_params.get("artifactType")
    referrers = await registry.list_referrers(name, digest, artifact_type)
    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [referrer.descriptor() for referrer in referrers],
    }
    headers = {"OCI-Filters-Applied": "artifactType"} if artifact_type is not None else {}
    # Always 200, also for an unknown subject: an empty index says "no referrers".
    return Response(json.dumps(index).encode(), media_type=OCI_INDEX, headers=headers)
