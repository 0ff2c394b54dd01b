"""The `distribution` format: events as Distribution (registry:2) notifications.

Existing consumers of Distribution's notifications (docs/notifications.md of
distribution/distribution: an envelope `{"events": [...]}` sent as
`application/vnd.docker.distribution.events.v2+json`) take these unchanged. Mapping:
`manifest.pushed` → one `push` per tag the push named (one without a tag for a push by
digest); `manifest.deleted` → `delete` of the digest; `tag.deleted` → `delete` of the tag;
`repository.deleted` → `delete` of the repository; `blob.mounted` → `mount` (with
`fromRepository`). Distribution has no tag-move events:
`tag.created` and `tag.moved` (the floating tags) are not sent in this format.
"""

from __future__ import annotations

from typing import Any

from cangku.events import records

MEDIA_TYPE = "application/vnd.docker.distribution.events.v2+json"
TYPES = (
    records.MANIFEST_PUSHED,
    records.MANIFEST_DELETED,
    records.TAG_DELETED,
    records.REPOSITORY_DELETED,
    records.BLOB_MOUNTED,
)


def envelope(event: dict[str, Any]) -> dict[str, Any]:
    """The Distribution envelope of one CloudEvent of a type in TYPES. Raises ValueError for
    another type."""
    data = event["data"]
    common = {
        "timestamp": event["time"],
        "request": {"id": data.get("requestId") or ""},
        "actor": {"name": data["actor"]} if data.get("actor") else {},
        "source": {"instanceID": "cangku"},
    }
    target: dict[str, Any] = {"repository": data["repository"]}
    kind = event["type"]
    if kind == records.MANIFEST_PUSHED:
        target.update(
            mediaType=data["mediaType"],
            digest=data["digest"],
            size=data["size"],
            length=data["size"],
        )
        tags = data["tags"] or [None]
        found = []
        for index, tag in enumerate(tags):
            one = dict(target, tag=tag) if tag is not None else target
            # One entry per tag; their ids stay stable across deliveries.
            entry_id = event["id"] if index == 0 else f"{event['id']}-{index}"
            found.append({"id": entry_id, "action": "push", "target": one, **common})
        return {"events": found}
    if kind == records.MANIFEST_DELETED:
        target["digest"] = data["digest"]
    elif kind == records.BLOB_MOUNTED:
        # Distribution's `mount`: the blob's target, with the repository it came from.
        target.update(
            mediaType="application/octet-stream",
            digest=data["digest"],
            size=data["size"],
            length=data["size"],
            fromRepository=data["from"],
        )
        return {"events": [{"id": event["id"], "action": "mount", "target": target, **common}]}
    elif kind == records.TAG_DELETED:
        target.update(tag=data["tag"], digest=data["previousDigest"])
    elif kind != records.REPOSITORY_DELETED:
        raise ValueError(f"{kind} has no Distribution notification")
    return {"events": [{"id": event["id"], "action": "delete", "target": target, **common}]}
