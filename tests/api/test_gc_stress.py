"""Stress: clients push, tag, delete and pull while garbage collection runs non-stop.

Several clients (asyncio tasks against the ASGI app) loop for a few seconds; two collectors
with a zero grace period run back to back — one on the server's database connections, one on
its own as `cangku gc` would. Clients behave like docker: HEAD each blob, mount or upload
what is missing, put the manifest, and start over when the registry says a blob is unknown.

Afterwards every remaining tag pulls with verified digests, every stored file matches its
digest, every recorded blob has its file, and no blob is left that nothing references.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from cangku.metadata.schema import blobs, manifest_references
from cangku.metadata.store import MetadataStore
from cangku.registry import Registry
from cangku.registry.gc import GarbageCollector
from cangku.storage.filesystem import FilesystemStorage
from tests.api.helpers import (
    OCI_CONFIG,
    OCI_LAYER,
    OCI_MANIFEST,
    blob_files,
    descriptor,
    pull_image,
    recorded_blobs,
    sha256,
)
from tests.databases import same_database

STRESS_SECONDS = 5.0
CLIENTS = 4
RETRIES = 30


class Retry(Exception):
    """The registry said a blob is unknown: start the push over, as docker does."""


@dataclass
class Image:
    config: bytes
    layers: list[bytes]

    @property
    def manifest(self) -> bytes:
        return json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": descriptor(OCI_CONFIG, self.config),
                "layers": [descriptor(OCI_LAYER, layer) for layer in self.layers],
            }
        ).encode()

    @property
    def digest(self) -> str:
        return sha256(self.manifest)


@dataclass
class StressClient:
    number: int
    client: httpx.AsyncClient
    shared_layers: list[bytes]
    stats: Counter[str]
    rng: random.Random
    # What this client believes: tag -> image, per repository it owns.
    tags: dict[str, dict[str, Image]] = field(default_factory=dict)

    @property
    def repositories(self) -> list[str]:
        return [f"stress{self.number}/app", f"stress{self.number}/tools"]

    async def run(self, deadline: float, everyone: list[StressClient]) -> None:
        for name in self.repositories:
            self.tags[name] = {}
        serial = 0
        while time.monotonic() < deadline:
            serial += 1
            name = self.rng.choice(self.repositories)
            action = self.rng.random()
            known = self.tags[name]
            if action < 0.4 or not known:
                await self.push(name, f"t{serial}", self.new_image())
            elif action < 0.5:
                # Tag an image this client pushed before (by pushing its manifest again).
                image = self.rng.choice(list(known.values()))
                await self.push(name, f"t{serial}", image)
            elif action < 0.6:
                tag = self.rng.choice(list(known))
                response = await self.client.delete(f"/v2/{name}/manifests/{tag}")
                assert response.status_code == 202, response.text
                del known[tag]
                self.stats["tag deletes"] += 1
            elif action < 0.7:
                image = self.rng.choice(list(known.values()))
                response = await self.client.delete(f"/v2/{name}/manifests/{image.digest}")
                assert response.status_code == 202, response.text
                for tag in [t for t, i in known.items() if i.digest == image.digest]:
                    del known[tag]
                self.stats["manifest deletes"] += 1
            elif action < 0.9:
                # Our own tags: nobody else moves them, so they must always pull.
                tag = self.rng.choice(list(known))
                await pull_image(self.client, name, tag)
                self.stats["pulls"] += 1
            else:
                await self.pull_someone_elses(self.rng.choice(everyone))

    def new_image(self) -> Image:
        layers = [os.urandom(self.rng.randrange(100, 3000))]
        layers += self.rng.sample(self.shared_layers, self.rng.randrange(0, 2))
        config = json.dumps({"os": "linux", "salt": os.urandom(6).hex()}).encode()
        return Image(config, layers)

    async def push(self, name: str, tag: str, image: Image) -> None:
        for _ in range(RETRIES):
            try:
                for blob in [image.config, *image.layers]:
                    await self.ensure_blob(name, blob)
                response = await self.client.put(
                    f"/v2/{name}/manifests/{tag}",
                    content=image.manifest,
                    headers={"Content-Type": OCI_MANIFEST},
                )
                if response.status_code == 400 and _code(response) == "MANIFEST_BLOB_UNKNOWN":
                    raise Retry
                assert response.status_code == 201, response.text
                self.tags[name][tag] = image
                self.stats["pushes"] += 1
                return
            except Retry:
                self.stats["retried pushes"] += 1
        raise AssertionError(f"{name}:{tag} did not push in {RETRIES} attempts")

    async def ensure_blob(self, name: str, blob: bytes) -> None:
        digest = sha256(blob)
        if (await self.client.head(f"/v2/{name}/blobs/{digest}")).status_code == 200:
            return
        source = self.rng.choice([r for r in self.repositories if r != name])
        started = await self.client.post(
            f"/v2/{name}/blobs/uploads/", params={"mount": digest, "from": source}
        )
        if started.status_code == 201:
            self.stats["mounts"] += 1
            return
        assert started.status_code == 202, started.text
        location = started.headers["Location"]
        if self.rng.random() < 0.5:
            finished = await self.client.put(location, params={"digest": digest}, content=blob)
        else:
            middle = len(blob) // 2
            patched = await self.client.patch(
                location,
                content=blob[:middle],
                headers={"Content-Range": f"0-{middle - 1}"},
            )
            assert patched.status_code == 202, patched.text
            finished = await self.client.put(
                patched.headers["Location"], params={"digest": digest}, content=blob[middle:]
            )
        if finished.status_code == 400 and _code(finished) == "BLOB_UPLOAD_INVALID":
            self.stats["uploads refused mid-collection"] += 1
            raise Retry
        assert finished.status_code == 201, finished.text

    async def pull_someone_elses(self, other: StressClient) -> None:
        """Another client may delete what we pull meanwhile: a clean 404 is fine."""
        choices = [(name, tag) for name, tags in other.tags.items() for tag in tags]
        if not choices:
            return
        name, tag = self.rng.choice(choices)
        response = await self.client.get(
            f"/v2/{name}/manifests/{tag}", headers={"Accept": OCI_MANIFEST}
        )
        if response.status_code == 404:
            self.stats["foreign pulls gone"] += 1
            return
        assert response.status_code == 200, response.text
        document = json.loads(response.content)
        for blob in [document["config"], *document["layers"]]:
            got = await self.client.get(f"/v2/{name}/blobs/{blob['digest']}")
            if got.status_code == 404:
                self.stats["foreign pulls gone"] += 1
                return
            assert got.status_code == 200, got.text
            assert sha256(got.content) == blob["digest"]
        self.stats["foreign pulls"] += 1


def _code(response: httpx.Response) -> str:
    code: str = response.json()["errors"][0]["code"]
    return code


async def collect_repeatedly(
    collector: GarbageCollector, deadline: float, stats: Counter[str], label: str
) -> None:
    while time.monotonic() < deadline:
        report = await collector.collect()
        stats[f"{label} runs"] += 1
        stats["collected blobs"] += len(report.blobs)
        stats["collected manifests"] += len(report.manifests)
        # Zero grace makes a just-uploaded blob garbage until its manifest lands: leave pushes
        # a window between collections, or none would ever finish (as with real clients).
        await asyncio.sleep(random.uniform(0.1, 0.3))


@pytest.mark.parametrize("untagged", [None, 0.0], ids=["keep-untagged", "delete-untagged"])
async def test_pushes_tags_deletes_and_pulls_survive_continuous_collection(
    client: httpx.AsyncClient,
    registry: Registry,
    collector: GarbageCollector,
    data_dir: Path,
    untagged: float | None,
) -> None:
    rng = random.Random(int.from_bytes(os.urandom(4), "big"))
    stats: Counter[str] = Counter()
    shared_layers = [os.urandom(rng.randrange(500, 4000)) for _ in range(5)]
    clients = [
        StressClient(number, client, shared_layers, stats, random.Random(rng.random()))
        for number in range(CLIENTS)
    ]
    policy = replace(collector.policy, delete_untagged_after=untagged)
    in_server = GarbageCollector(registry.storage, registry.metadata, policy)
    # Like `cangku gc`: its own connections and storage object on the same data directory.
    other_metadata = MetadataStore.open(same_database(registry.metadata))
    beside = GarbageCollector(FilesystemStorage(data_dir), other_metadata, policy)
    deadline = time.monotonic() + STRESS_SECONDS
    try:
        await asyncio.gather(
            *(stress.run(deadline, clients) for stress in clients),
            collect_repeatedly(in_server, deadline, stats, "in-server collector"),
            collect_repeatedly(beside, deadline, stats, "separate collector"),
        )
        await beside.collect()
    finally:
        await other_metadata.close()
    print(f"\nstress {untagged=}: {dict(stats)}")
    # Enough of everything happened, interleaved: collections found garbage and made pushes
    # start over (the retries prove the races were hit, not dodged).
    assert stats["pushes"] >= 10 and stats["retried pushes"] >= 1
    assert stats["in-server collector runs"] >= 5 and stats["separate collector runs"] >= 5
    assert stats["collected blobs"] > 0
    if untagged is not None:
        assert stats["collected manifests"] > 0

    # Every tag is where its client left it, and pulls whole, digests verified.
    for stress in clients:
        for name, tags in stress.tags.items():
            listed = (await client.get(f"/v2/{name}/tags/list")).json().get("tags") or []
            assert sorted(listed) == sorted(tags)
            for tag, image in tags.items():
                document = await pull_image(client, name, tag)
                assert sha256(json.dumps(document).encode()) == image.digest

    # Every stored file matches its digest; recorded blobs and files are the same set.
    files = blob_files(data_dir)
    for digest in files:
        path = data_dir / "blobs" / "sha256" / digest[7:9] / digest[7:]
        assert "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest() == digest
    recorded = await recorded_blobs(registry)
    assert recorded == files

    # With a zero grace period, nothing unreferenced is left.
    referenced = set(
        await registry.metadata.read(
            lambda c: c.scalars(select(manifest_references.c.target_digest)).all()
        )
    )
    unreferenced = await registry.metadata.read(
        lambda c: c.scalars(select(blobs.c.digest).where(blobs.c.digest.not_in(referenced))).all()
    )
    assert unreferenced == []
