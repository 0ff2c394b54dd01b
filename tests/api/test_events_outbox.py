"""Issue 16: the events outbox, written in the transaction of the change it reports."""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx

from cangku.metadata import events as event_rows
from cangku.registry import Registry
from tests.api.helpers import OCI_MANIFEST, push_image

REPO = "jimo/my-image"


async def outbox(registry: Registry) -> list[dict[str, Any]]:
    rows = await registry.metadata.read(lambda connection: event_rows.after(connection, 0, 1000))
    found = []
    for row in rows:
        event = json.loads(row.payload)
        # The row's columns agree with the event they hold.
        assert (row.event_id, row.type, row.repository) == (
            event["id"],
            event["type"],
            event["data"]["repository"],
        )
        found.append(event)
    return found


def summary(events: list[dict[str, Any]]) -> list[tuple[str, str | None]]:
    return [(event["type"], event["data"].get("tag")) for event in events]


async def tag(client: httpx.AsyncClient, reference: str, content: bytes) -> httpx.Response:
    return await client.put(
        f"/v2/{REPO}/manifests/{reference}", content=content, headers={"Content-Type": OCI_MANIFEST}
    )


async def test_a_push_of_1_9_3_records_the_manifest_its_tag_and_the_floating_moves(
    client: httpx.AsyncClient, registry: Registry
) -> None:
    old, old_content = await push_image(client, REPO)
    assert (await tag(client, "1.9.2", old_content)).status_code == 201
    new, new_content = await push_image(client, REPO)
    before = len(await outbox(registry))

    response = await tag(client, "1.9.3", new_content)
    assert response.status_code == 201

    events = (await outbox(registry))[before:]
    assert summary(events) == [
        ("io.cangku.manifest.pushed", None),
        ("io.cangku.tag.created", "1.9.3"),
        ("io.cangku.tag.moved", "1.9"),
        ("io.cangku.tag.moved", "1"),
        ("io.cangku.tag.moved", "latest"),
    ]
    pushed = events[0]
    assert {key: pushed[key] for key in ("specversion", "type", "source", "subject")} == {
        "specversion": "1.0",
        "type": "io.cangku.manifest.pushed",
        "source": f"/api/v1/repositories/{REPO}",
        "subject": f"{REPO}@{new}",
    }
    assert pushed["datacontenttype"] == "application/json"
    assert pushed["time"].endswith("Z")
    assert pushed["data"] == {
        "repository": REPO,
        "digest": new,
        "mediaType": OCI_MANIFEST,
        "size": len(new_content),
        "tags": ["1.9.3"],
        "actor": None,
        "requestId": response.headers["x-request-id"],
    }
    created = events[1]["data"]
    assert (created["digest"], created["previousDigest"]) == (new, None)
    assert "follows" not in created
    for moved in events[2:]:
        assert moved["subject"] == f"{REPO}:{moved['data']['tag']}"
        assert moved["data"]["digest"] == new
        assert moved["data"]["previousDigest"] == old
        assert moved["data"]["follows"] == "1.9.3"
        assert moved["data"]["requestId"] == response.headers["x-request-id"]
    # Every event its own id (CloudEvents 1.0 §3.1.1), a UUID.
    ids = [event["id"] for event in events]
    assert len(set(ids)) == len(ids)
    assert all(uuid.UUID(event_id) for event_id in ids)


async def test_a_refused_push_leaves_no_event(
    client: httpx.AsyncClient, registry: Registry
) -> None:
    await registry.set_tag_policy("repository", REPO, immutable_versions=True)
    _, content = await push_image(client, REPO)
    _, other = await push_image(client, REPO)
    assert (await tag(client, "1.9.2", content)).status_code == 201
    before = await outbox(registry)
    assert summary(before)[-1] == ("io.cangku.tag.created", "latest")
    # Refused in push_tag, after the manifest's event was written: the transaction rolls back.
    assert (await tag(client, "1.9.2", other)).status_code == 403
    assert await outbox(registry) == before


async def test_deletes_record_the_manifest_the_tags_and_the_floating_fall_back(
    client: httpx.AsyncClient, registry: Registry
) -> None:
    older, older_content = await push_image(client, REPO)
    newer, newer_content = await push_image(client, REPO)
    await tag(client, "1.9.2", older_content)
    await tag(client, "1.9.3", newer_content)
    before = len(await outbox(registry))

    assert (await client.delete(f"/v2/{REPO}/manifests/{newer}")).status_code == 202
    events = (await outbox(registry))[before:]
    # Deleting by digest deletes every tag on it; the floating tags then fall back to 1.9.2:
    # for a receiver, a move each (not a deletion and a creation).
    assert summary(events) == [
        ("io.cangku.manifest.deleted", None),
        ("io.cangku.tag.deleted", "1.9.3"),
        ("io.cangku.tag.moved", "1.9"),
        ("io.cangku.tag.moved", "1"),
        ("io.cangku.tag.moved", "latest"),
    ]
    assert events[0]["data"]["digest"] == newer
    assert (events[1]["data"]["previousDigest"], events[1]["data"]["digest"]) == (newer, None)
    for moved in events[2:]:
        assert (moved["data"]["previousDigest"], moved["data"]["digest"]) == (newer, older)
        assert moved["data"]["follows"] == "1.9.2"

    before = len(await outbox(registry))
    assert (await client.delete(f"/v2/{REPO}/manifests/1.9.2")).status_code == 202
    events = (await outbox(registry))[before:]
    # The last release of the line goes: its floating tags go with it.
    assert summary(events) == [
        ("io.cangku.tag.deleted", "1.9.2"),
        ("io.cangku.tag.deleted", "1.9"),
        ("io.cangku.tag.deleted", "1"),
        ("io.cangku.tag.deleted", "latest"),
    ]
    assert all(event["data"]["previousDigest"] == older for event in events)


async def test_deleting_a_repository_records_its_tags_and_itself(
    client: httpx.AsyncClient, registry: Registry
) -> None:
    _, content = await push_image(client, REPO)
    await tag(client, "2.0.0", content)
    before = len(await outbox(registry))
    await registry.delete_repository(REPO)
    events = (await outbox(registry))[before:]
    assert sorted(summary(events)[:-1]) == [
        ("io.cangku.tag.deleted", "2"),
        ("io.cangku.tag.deleted", "2.0"),
        ("io.cangku.tag.deleted", "2.0.0"),
        ("io.cangku.tag.deleted", "latest"),
    ]
    assert summary(events)[-1] == ("io.cangku.repository.deleted", None)
    assert events[-1]["subject"] == REPO
