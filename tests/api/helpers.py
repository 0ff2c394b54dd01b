"""Building blocks for API tests: push blobs and images the way clients do."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import select

from cangku.app import create_app
from cangku.config import Settings
from cangku.metadata.schema import blobs
from cangku.metadata.store import MetadataStore
from cangku.registry import Registry
from cangku.storage.base import BlobStorage

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def error_code(response: httpx.Response) -> str:
    code: str = response.json()["errors"][0]["code"]
    return code


async def push_blob(client: httpx.AsyncClient, name: str, data: bytes) -> str:
    digest = sha256(data)
    response = await client.post(
        f"/v2/{name}/blobs/uploads/", params={"digest": digest}, content=data
    )
    assert response.status_code == 201, response.text
    return digest


def descriptor(media_type: str, data: bytes, **extra: Any) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": sha256(data), "size": len(data), **extra}


async def push_image(
    client: httpx.AsyncClient,
    name: str,
    reference: str | None = None,
    *,
    layers: int = 2,
    media_type: str = OCI_MANIFEST,
    architecture: str = "amd64",
    extra: dict[str, Any] | None = None,
) -> tuple[str, bytes]:
    """Push config, layers and a manifest; returns (digest, manifest bytes)."""
    docker = media_type == DOCKER_MANIFEST
    config = json.dumps(
        {"architecture": architecture, "os": "linux", "salt": os.urandom(8).hex()}
    ).encode()
    await push_blob(client, name, config)
    layer_descriptors = []
    for _ in range(layers):
        layer = os.urandom(512)
        await push_blob(client, name, layer)
        layer_descriptors.append(descriptor(DOCKER_LAYER if docker else OCI_LAYER, layer))
    document = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": descriptor(DOCKER_CONFIG if docker else OCI_CONFIG, config),
        "layers": layer_descriptors,
        **(extra or {}),
    }
    content = json.dumps(document, indent="\t").encode()
    digest = sha256(content)
    response = await client.put(
        f"/v2/{name}/manifests/{reference or digest}",
        content=content,
        headers={"Content-Type": media_type},
    )
    assert response.status_code == 201, response.text
    return digest, content


async def put_manifest(
    client: httpx.AsyncClient, name: str, reference: str, document: dict[str, Any], media_type: str
) -> httpx.Response:
    return await client.put(
        f"/v2/{name}/manifests/{reference}",
        content=json.dumps(document).encode(),
        headers={"Content-Type": media_type},
    )


async def pull_image(client: httpx.AsyncClient, name: str, reference: str) -> dict[str, Any]:
    """GET a manifest (or index) and every blob under it, verifying each digest."""
    response = await client.get(
        f"/v2/{name}/manifests/{reference}",
        headers={"Accept": ", ".join([OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST])},
    )
    assert response.status_code == 200, f"{name}:{reference}: {response.text}"
    assert sha256(response.content) == response.headers["Docker-Content-Digest"]
    document: dict[str, Any] = json.loads(response.content)
    for child in document.get("manifests", []):
        await pull_image(client, name, child["digest"])
    for blob in [document["config"], *document["layers"]] if "config" in document else []:
        got = await client.get(f"/v2/{name}/blobs/{blob['digest']}")
        assert got.status_code == 200, f"{name}@{blob['digest']}: {got.text}"
        assert sha256(got.content) == blob["digest"]
    return document


def blob_files(data_dir: Path) -> set[str]:
    return {f"sha256:{path.name}" for path in (data_dir / "blobs" / "sha256").glob("*/*")}


async def recorded_blobs(registry: Registry) -> set[str]:
    return set(await registry.metadata.read(lambda c: c.scalars(select(blobs.c.digest)).all()))


async def push_manifest_of(
    client: httpx.AsyncClient,
    name: str,
    reference: str | None,
    config: bytes,
    layers: list[bytes],
    **extra: Any,
) -> str:
    """Upload config and layers (already present ones too) and put their manifest."""
    for blob in [config, *layers]:
        await push_blob(client, name, blob)
    document = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor(OCI_CONFIG, config),
        "layers": [descriptor(OCI_LAYER, layer) for layer in layers],
        **extra,
    }
    content = json.dumps(document).encode()
    response = await put_manifest(
        client, name, reference or sha256(content), document, OCI_MANIFEST
    )
    assert response.status_code == 201, response.text
    return sha256(content)


def random_config() -> bytes:
    return json.dumps(
        {"architecture": "amd64", "os": "linux", "salt": os.urandom(8).hex()}
    ).encode()


@contextlib.asynccontextmanager
async def open_registry_client(
    storage: BlobStorage, database_url: str, data_dir: Path
) -> AsyncIterator[httpx.AsyncClient]:
    """An in-process client of the registry API without accounts, on `storage` and a
    metadata store of its own (closed afterwards)."""
    metadata = MetadataStore.open(database_url)
    try:
        app = create_app(Settings(data=data_dir, auth={"open": True}), Registry(storage, metadata))
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://registry.test"
        ) as client:
            yield client
    finally:
        await metadata.close()
