"""Issue 16: the repository.created, blob.mounted and (opt-in, aggregated) pulled events."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import httpx

from cangku.app import create_app
from cangku.config import EventSettings, Settings
from cangku.events import distribution
from cangku.events.webhooks import Endpoint
from cangku.registry import Registry
from tests.api.helpers import OCI_MANIFEST, push_blob, push_image
from tests.api.test_events_outbox import outbox

REPO = "jimo/my-image"


async def test_the_first_push_into_a_repository_records_its_creation_once(
    client: httpx.AsyncClient, registry: Registry
) -> None:
    await push_image(client, REPO)
    await push_image(client, REPO)
    await push_image(client, "jimo/other")
    created = [e for e in await outbox(registry) if e["type"] == "io.cangku.repository.created"]
    assert [(e["subject"], e["data"]["repository"]) for e in created] == [
        (REPO, REPO),
        ("jimo/other", "jimo/other"),
    ]
    # Deleted and pushed again: the repository (its row: visibility, tag history) stayed,
    # so this is no creation (docs/events.md).
    await registry.delete_repository(REPO)
    await push_image(client, REPO)
    created = [e for e in await outbox(registry) if e["type"] == "io.cangku.repository.created"]
    assert len(created) == 2


async def test_a_cross_repository_mount_records_blob_mounted(
    client: httpx.AsyncClient, registry: Registry
) -> None:
    data = os.urandom(1000)
    digest = await push_blob(client, "jimo/base", data)
    response = await client.post(
        f"/v2/{REPO}/blobs/uploads/", params={"mount": digest, "from": "jimo/base"}
    )
    assert response.status_code == 201, response.text
    events = await outbox(registry)
    mine = [(e["type"], e["data"]) for e in events if e["data"]["repository"] == REPO]
    assert [kind for kind, _ in mine] == [
        "io.cangku.repository.created",
        "io.cangku.blob.mounted",
    ]
    mounted = mine[1][1]
    assert (mounted["digest"], mounted["size"], mounted["from"]) == (digest, 1000, "jimo/base")
    # A mount that cannot happen (no such blob there) records nothing.
    missing = "sha256:" + hashlib.sha256(b"nothing").hexdigest()
    await client.post(f"/v2/{REPO}/blobs/uploads/", params={"mount": missing, "from": "jimo/base"})
    assert len(await outbox(registry)) == len(events)
    # The distribution format sends it as Distribution's `mount`.
    mount_event = next(e for e in events if e["type"] == "io.cangku.blob.mounted")
    [entry] = distribution.envelope(mount_event)["events"]
    assert entry["action"] == "mount"
    assert entry["target"]["fromRepository"] == "jimo/base"
    assert entry["target"]["digest"] == digest


async def test_pulls_are_one_event_per_digest_per_flush_and_only_when_enabled(
    registry: Registry, data_dir: Path
) -> None:
    for enabled in (False, True):
        app = create_app(
            Settings(data=data_dir, auth={"open": True}, events={"pulled": enabled}), registry
        )
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://r.test") as client:
            digest, _ = await push_image(client, REPO)
            other, _ = await push_image(client, REPO)
            before = len(await outbox(registry))
            for _ in range(5):
                got = await client.get(
                    f"/v2/{REPO}/manifests/{digest}", headers={"Accept": OCI_MANIFEST}
                )
                assert got.status_code == 200
            await client.get(f"/v2/{REPO}/manifests/{other}", headers={"Accept": OCI_MANIFEST})
            # Pulls alone write nothing: the events come with the statistics' flush.
            assert len(await outbox(registry)) == before
            await registry.pulls.flush()
            pulled = [e for e in (await outbox(registry))[before:]]
            if not enabled:
                assert pulled == []
                continue
            assert sorted((e["type"], e["data"]["digest"], e["data"]["count"]) for e in pulled) == (
                sorted(
                    [
                        ("io.cangku.pulled", digest, 5),
                        ("io.cangku.pulled", other, 1),
                    ]
                )
            )
            assert all(e["data"]["since"] <= e["data"]["lastPulledAt"] for e in pulled)


def test_pulled_goes_only_to_endpoints_that_name_it() -> None:
    event = {"data": {"repository": REPO, "digest": "sha256:x", "count": 3}}
    every = Endpoint("k", "https://h.example", "s", (), (), "cloudevents", "server")
    named = Endpoint(
        "k", "https://h.example", "s", ("io.cangku.pulled",), ("1.*",), "cloudevents", "server"
    )
    assert not every.takes("io.cangku.pulled", event)
    assert named.takes("io.cangku.pulled", event)
    assert every.takes("io.cangku.repository.created", {"data": {"repository": REPO}})
    assert "io.cangku.pulled" not in distribution.TYPES
    assert EventSettings().pulled is False
