"""The events of a change, as CloudEvents 1.0 in structured JSON mode, into the outbox.

The use cases (registry/manifests.py, registry/tags.py, registry/browse.py) call these inside
the transaction that makes the change: the outbox row commits with it, so a committed push
always has its events and a rolled-back one never does. Each event gets its `id` here, once;
every delivery of it carries that id, so receivers can de-duplicate (CloudEvents 1.0 §3.1.1
"id": source + id is unique).

Format: CloudEvents 1.0 (https://github.com/cloudevents/spec/blob/v1.0.2/cloudevents/spec.md)
in the JSON event format's structured mode (formats/json-format.md §3): one JSON object with
the context attributes and `data`. Written by hand rather than with the `cloudevents` SDK:
the outbox only needs the seven attributes serialised once, and the SDK's parsing, HTTP
bindings and extra dependencies serve no use here.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from cangku.metadata import Connection
from cangku.metadata import events as event_rows
from cangku.registry.context import RequestContext

SPEC_VERSION = "1.0"
MANIFEST_PUSHED = "io.cangku.manifest.pushed"
MANIFEST_DELETED = "io.cangku.manifest.deleted"
TAG_CREATED = "io.cangku.tag.created"
TAG_MOVED = "io.cangku.tag.moved"
TAG_DELETED = "io.cangku.tag.deleted"
REPOSITORY_DELETED = "io.cangku.repository.deleted"
REPOSITORY_CREATED = "io.cangku.repository.created"
BLOB_MOUNTED = "io.cangku.blob.mounted"
# Opt-in twice: recorded only with `events.pulled` on, and sent only to endpoints that name
# it in their `types` (a busy registry would otherwise flood every receiver).
PULLED = "io.cangku.pulled"
TYPES = (
    MANIFEST_PUSHED,
    MANIFEST_DELETED,
    TAG_CREATED,
    TAG_MOVED,
    TAG_DELETED,
    REPOSITORY_CREATED,
    REPOSITORY_DELETED,
    BLOB_MOUNTED,
    PULLED,
)


@dataclass(frozen=True, slots=True)
class TagChange:
    """One tag change of a push or delete: `previous` None → created, `digest` None →
    deleted, else moved. `follows`: for a floating tag (`1.9`, `1`, `latest`) the version tag
    whose push, delete or release moved it; None for a tag a client named."""

    tag: str
    previous: str | None
    digest: str | None
    reason: str
    follows: str | None = None


def manifest_pushed(
    connection: Connection,
    repository: str,
    context: RequestContext,
    *,
    digest: str,
    media_type: str,
    size: int,
    tags: list[str],
) -> None:
    """A manifest was pushed (each PUT, also of a digest already stored: it may (re)tag)."""
    data = {"digest": digest, "mediaType": media_type, "size": size, "tags": tags}
    _append(
        connection,
        repository,
        [_event(MANIFEST_PUSHED, repository, f"{repository}@{digest}", data, context)],
    )


def manifest_deleted(
    connection: Connection, repository: str, context: RequestContext, *, digest: str
) -> None:
    """A manifest was deleted by digest (its tags' deletions are their own events)."""
    data: dict[str, object] = {"digest": digest}
    _append(
        connection,
        repository,
        [_event(MANIFEST_DELETED, repository, f"{repository}@{digest}", data, context)],
    )


def tag_changes(
    connection: Connection, repository: str, context: RequestContext, changes: Iterable[TagChange]
) -> None:
    """The tag changes of one push or delete, in the order they were made.

    A tag deleted and pointed again within the same change (deleting a manifest by digest
    deletes its floating tags, which then fall back to the release left) is one move for a
    receiver: from the digest it had before to the one it has after.
    """
    found = []
    for change in _net(list(changes)):
        if change.previous == change.digest:
            continue
        if change.previous is None:
            kind = TAG_CREATED
        elif change.digest is None:
            kind = TAG_DELETED
        else:
            kind = TAG_MOVED
        data: dict[str, object] = {
            "tag": change.tag,
            "digest": change.digest,
            "previousDigest": change.previous,
            "reason": change.reason,
        }
        if change.follows is not None:
            data["follows"] = change.follows
        found.append(_event(kind, repository, f"{repository}:{change.tag}", data, context))
    _append(connection, repository, found)


def _net(changes: list[TagChange]) -> list[TagChange]:
    deleted = {change.tag: index for index, change in enumerate(changes) if change.digest is None}
    merged: dict[int, TagChange | None] = {}
    for index, change in enumerate(changes):
        earlier = deleted.get(change.tag)
        if change.previous is None and earlier is not None and earlier < index:
            merged[earlier] = None
            merged[index] = replace(change, previous=changes[earlier].previous)
    found = [merged.get(index, change) for index, change in enumerate(changes)]
    return [change for change in found if change is not None]


def repository_deleted(connection: Connection, repository: str, context: RequestContext) -> None:
    """A repository was deleted (its tags' deletions are their own events)."""
    _append(
        connection, repository, [_event(REPOSITORY_DELETED, repository, repository, {}, context)]
    )


def repository_created(connection: Connection, repository: str, context: RequestContext) -> None:
    """A repository came to be: the first blob or manifest pushed (or mounted) into it."""
    _append(
        connection, repository, [_event(REPOSITORY_CREATED, repository, repository, {}, context)]
    )


def blob_mounted(
    connection: Connection,
    repository: str,
    context: RequestContext,
    *,
    digest: str,
    size: int,
    source: str,
) -> None:
    """A blob of repository `source` was linked into `repository` (a cross-repository mount,
    OCI dist-spec "Mounting a blob from another repository")."""
    data: dict[str, object] = {"digest": digest, "size": size, "from": source}
    _append(
        connection,
        repository,
        [_event(BLOB_MOUNTED, repository, f"{repository}@{digest}", data, context)],
    )


def pulled(connection: Connection, counts: list[tuple[str, str, int, float]], since: float) -> None:
    """Pulls of manifests counted since `since` (Unix seconds), one event per (repository,
    digest) with its `count` and when it was `lastPulledAt`: written with the pull
    statistics' periodic flush (registry/pulls.py), never a write per pull. `counts`:
    (repository, digest, count, last pulled at)."""
    context = RequestContext()
    found = [
        (
            repository,
            _event(
                PULLED,
                repository,
                f"{repository}@{digest}",
                {
                    "digest": digest,
                    "count": count,
                    "since": _rfc3339(since),
                    "lastPulledAt": _rfc3339(last),
                },
                context,
            ),
        )
        for repository, digest, count, last in counts
    ]
    event_rows.insert_events(
        connection,
        [
            {
                "event_id": event["id"],
                "type": event["type"],
                "repository": repository,
                "created_at": time.time(),
                "payload": json.dumps(event, separators=(",", ":")),
            }
            for repository, event in found
        ],
    )


def _rfc3339(moment: float) -> str:
    # RFC 3339 (CloudEvents 1.0 §3.1.4 "time"), UTC, millisecond precision.
    return (
        datetime.fromtimestamp(moment, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


def _event(
    kind: str, repository: str, subject: str, data: dict[str, object], context: RequestContext
) -> dict[str, object]:
    now = time.time()
    return {
        "specversion": SPEC_VERSION,
        # Random, not derived from the change: pushing the same tag twice is two events.
        "id": str(uuid.uuid4()),
        "source": f"/api/v1/repositories/{repository}",
        "type": kind,
        "subject": subject,
        "time": _rfc3339(now),
        "datacontenttype": "application/json",
        "data": {
            "repository": repository,
            **data,
            "actor": context.caller,
            "requestId": context.request_id,
        },
    }


def _append(connection: Connection, repository: str, found: list[dict[str, object]]) -> None:
    now = time.time()
    event_rows.insert_events(
        connection,
        [
            {
                "event_id": event["id"],
                "type": event["type"],
                "repository": repository,
                "created_at": now,
                "payload": json.dumps(event, separators=(",", ":")),
            }
            for event in found
        ],
    )
