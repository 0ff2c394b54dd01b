"""Write transactions of two processes on one PostgreSQL database (issue 15): no lock every
write takes; a repository's manifest and tag writes still run one at a time.

PostgreSQL only (CANGKU_TEST_POSTGRES, `make test-postgresql`): SQLite has one writer.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from cangku.auth.accounts import AccountError, Accounts
from cangku.config import EventSettings
from cangku.content.errors import RequestInvalid
from cangku.events import webhooks
from cangku.events.webhooks import Spec
from cangku.metadata import webhooks as webhook_rows
from cangku.metadata.store import MetadataStore
from cangku.registry import Registry
from cangku.registry import manifests as manifests_module
from cangku.registry.context import IN_PROCESS
from cangku.registry.tags import push_tag
from cangku.storage.filesystem import FilesystemStorage
from tests.api.helpers import OCI_CONFIG, OCI_LAYER, OCI_MANIFEST, descriptor, push_blob
from tests.api.test_floating_tags import _app, _repository_with_images
from tests.databases import POSTGRES_ADMIN_URL, same_database

pytestmark = pytest.mark.skipif(
    not POSTGRES_ADMIN_URL, reason="PostgreSQL only (CANGKU_TEST_POSTGRES): SQLite has one writer"
)


async def test_a_push_waits_for_its_repository_not_for_other_writes(
    registry: Registry, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = Registry(
        FilesystemStorage(data_dir), MetadataStore.open(same_database(registry.metadata))
    )
    try:
        (_, first), (second_digest, second) = await _repository_with_images(
            registry, data_dir, "jimo/held", 2
        )
        ((elsewhere_digest, elsewhere),) = await _repository_with_images(
            registry, data_dir, "lan/free", 1
        )
        entered, release = threading.Event(), threading.Event()

        def paused_push_tag(connection: Any, repository_id: int, name: str, *rest: Any) -> Any:
            # The first push to jimo/held stops in the middle of its transaction.
            if name == "jimo/held" and not entered.is_set():
                entered.set()
                assert release.wait(20)
            return push_tag(connection, repository_id, name, *rest)

        monkeypatch.setattr(manifests_module, "push_tag", paused_push_tag)
        held = asyncio.ensure_future(
            registry.repository("jimo/held").manifests.put("1.9.3", first, OCI_MANIFEST, IN_PROCESS)
        )
        try:
            for _ in range(200):
                if entered.is_set():
                    break
                await asyncio.sleep(0.05)
            assert entered.is_set()
            # Another repository, from the other process: done while that transaction is open.
            await asyncio.wait_for(
                other.repository("lan/free").manifests.put(
                    "2.0.0", elsewhere, OCI_MANIFEST, IN_PROCESS
                ),
                timeout=10,
            )
            assert (await other.repository("lan/free").manifests.get("2")).digest == (
                elsewhere_digest
            )
            # The same repository, from the other process: waits for it.
            same = asyncio.ensure_future(
                other.repository("jimo/held").manifests.put(
                    "1.9.4", second, OCI_MANIFEST, IN_PROCESS
                )
            )
            await asyncio.sleep(0.5)
            assert not same.done()
        finally:
            release.set()
        await held
        await asyncio.wait_for(same, timeout=10)
        assert (await registry.repository("jimo/held").manifests.get("1.9")).digest == (
            second_digest
        )
    finally:
        await other.metadata.close()


async def test_two_processes_pushing_patches_at_once_move_the_minor_to_the_higher(
    registry: Registry, data_dir: Path
) -> None:
    # The case: two processes push 1.9.3 and 1.9.4 at once, many times over.
    other = Registry(
        FilesystemStorage(data_dir), MetadataStore.open(same_database(registry.metadata))
    )
    try:
        for round_number in range(16):
            name = f"jimo/patches{round_number}"
            (_, low), (high_digest, high) = await _repository_with_images(
                registry, data_dir, name, 2
            )
            first, second = (registry, other) if round_number % 2 else (other, registry)
            await asyncio.gather(
                first.repository(name).manifests.put("1.9.3", low, OCI_MANIFEST, IN_PROCESS),
                second.repository(name).manifests.put("1.9.4", high, OCI_MANIFEST, IN_PROCESS),
            )
            for floating in ("1.9", "1", "latest"):
                stored = await registry.repository(name).manifests.get(floating)
                assert stored.digest == high_digest, (round_number, floating)
    finally:
        await other.metadata.close()


async def test_two_replicas_creating_webhooks_at_once_keep_the_cap_per_scope(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = MetadataStore.open(same_database(registry.metadata))
    settings = EventSettings(allow_private=True)
    spec = Spec.parse({"url": "http://127.0.0.1:9/hook"})

    async def add(metadata: MetadataStore) -> str:
        try:
            await webhooks.create(
                metadata, settings, namespace="jimo", repository=None, spec=spec, actor="jimo"
            )
        except RequestInvalid:
            return "refused"
        return "created"

    try:
        for _ in range(webhooks.MAX_PER_SCOPE - 1):
            assert await add(registry.metadata) == "created"
        entered, release = threading.Event(), threading.Event()
        counted = webhook_rows.in_scope

        def paused_in_scope(connection: Any, *arguments: Any) -> Any:
            # The first replica stops after counting, before inserting.
            found = counted(connection, *arguments)
            if not entered.is_set():
                entered.set()
                assert release.wait(20)
            return found

        monkeypatch.setattr(webhook_rows, "in_scope", paused_in_scope)
        first = asyncio.ensure_future(add(registry.metadata))
        while not entered.is_set():
            await asyncio.sleep(0.01)
        second = asyncio.ensure_future(add(other))
        await asyncio.sleep(0.5)  # Without the lock the second counts 19 now, and inserts.
        release.set()
        assert sorted(await asyncio.gather(first, second)) == ["created", "refused"]
        listed = await webhooks.listing(registry.metadata, "jimo", None)
        assert len(listed) == webhooks.MAX_PER_SCOPE
    finally:
        await other.close()


async def test_deleting_an_account_waits_for_a_push_into_its_namespace(
    registry: Registry, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # jimo/app holds blobs but no image yet, so the deletion (without --delete-repositories)
    # may go on. A first image being pushed at that moment: without the namespace lock the
    # deletion's check saw no image and it went on beside the push (the image deleted with the
    # repository, or one of the two failing half-way); with it, it waits and then refuses.
    other = MetadataStore.open(same_database(registry.metadata))
    try:
        await Accounts(registry.metadata).add_user("jimo", "a-long-password-1")
        transport = httpx.ASGITransport(app=_app(registry, data_dir))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            config = json.dumps({"architecture": "amd64", "os": "linux"}).encode()
            layer = os.urandom(256)
            await push_blob(client, "jimo/app", config)
            await push_blob(client, "jimo/app", layer)
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": descriptor(OCI_CONFIG, config),
                "layers": [descriptor(OCI_LAYER, layer)],
            }
        ).encode()
        entered, release = threading.Event(), threading.Event()

        def paused_push_tag(connection: Any, repository_id: int, name: str, *rest: Any) -> Any:
            entered.set()
            assert release.wait(20)
            return push_tag(connection, repository_id, name, *rest)

        monkeypatch.setattr(manifests_module, "push_tag", paused_push_tag)
        app = registry.repository("jimo/app")
        push = asyncio.ensure_future(app.manifests.put("1.0.0", manifest, OCI_MANIFEST, IN_PROCESS))
        while not entered.is_set():
            await asyncio.sleep(0.01)
        deletion = asyncio.ensure_future(Accounts(other).delete_user("jimo"))
        await asyncio.sleep(0.5)
        assert not deletion.done()  # It waits for the push's transaction.
        release.set()
        stored = await push
        with pytest.raises(AccountError, match="still owns repositories with images"):
            await deletion
        assert (await app.manifests.get("1.0.0")).digest == str(stored.digest)
    finally:
        await other.close()
