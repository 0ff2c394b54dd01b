"""Pages render whatever the registry accepted: odd image configs, artifacts, indexes, and
page numbers from the address bar (issue 12 items 11-12, issue 19 items 2-3)."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import update
from sqlalchemy.engine import Connection

from cangku.app import create_app
from cangku.config import Settings
from cangku.metadata import schema
from cangku.metadata.store import MetadataStore, sqlite_url
from cangku.registry import Registry
from cangku.registry.context import IN_PROCESS
from cangku.storage.filesystem import FilesystemStorage
from tests.databases import fresh_database

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"

_counter = itertools.count()


async def blob(registry: Registry, name: str, data: bytes, media_type: str) -> dict[str, Any]:
    from cangku.content.digest import Digest

    digest = Digest.of(data)

    async def body() -> AsyncIterator[bytes]:
        yield data

    await registry.repository(name).blobs.upload(str(digest), body(), len(data), IN_PROCESS)
    return {"mediaType": media_type, "digest": str(digest), "size": len(data)}


async def push_image(
    registry: Registry,
    name: str,
    tag: str | None,
    config: bytes,
    *,
    layers: list[bytes] | None = None,
    extra: dict[str, Any] | None = None,
) -> tuple[str, int]:
    """An image manifest over the given config bytes; returns its digest and size."""
    descriptors = [
        await blob(registry, name, layer, OCI_LAYER) for layer in layers or [os.urandom(64)]
    ]
    document = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": await blob(registry, name, config, OCI_CONFIG),
        "layers": descriptors,
        **(extra or {}),
    }
    content = json.dumps(document).encode()
    pushed = await registry.repository(name).manifests.put(
        tag or pushed_digest(content), content, OCI_MANIFEST, IN_PROCESS
    )
    return pushed.digest, len(content)


def pushed_digest(content: bytes) -> str:
    from cangku.content.digest import Digest

    return str(Digest.of(content))


async def open_site(
    data_dir: Path, database_url: str | None = None
) -> tuple[Registry, httpx.AsyncClient]:
    metadata = MetadataStore.open(database_url or sqlite_url(data_dir))
    registry = Registry(FilesystemStorage(data_dir), metadata)
    settings_ = Settings(data=data_dir, auth={"open": True})
    transport = httpx.ASGITransport(app=create_app(settings_, registry))
    client = httpx.AsyncClient(transport=transport, base_url="http://registry.test")
    return registry, client


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[tuple[Registry, httpx.AsyncClient]]:
    """The open-mode site on SQLite, or on PostgreSQL with CANGKU_TEST_POSTGRES."""
    with fresh_database(tmp_path) as database_url:
        registry, client = await open_site(tmp_path, database_url)
        async with client:
            yield registry, client
        await registry.metadata.close()


def text_of(page: httpx.Response) -> str:
    """The page's visible text, tags dropped and whitespace folded (for phrase checks)."""
    return " ".join(re.sub(r"<[^>]+>", " ", page.text).split())


# -- issue 12 item 11: a pushed config never breaks a page ---------------------------------


@pytest.mark.parametrize(
    "config",
    [
        pytest.param(b'{"architecture": "amd64", "os": "linux", "history": 5}', id="history-5"),
        pytest.param(b"[" * 100_000 + b"]" * 100_000, id="nested-100000-deep"),
        pytest.param(
            b'{"os": "linux", "created": ' + b"[" * 500 + b"]" * 500 + b"}", id="nested-value"
        ),
        pytest.param(
            b'{"config": {"Labels": {"a": {"b": 1}}, "Env": 7, "Cmd": [1, null]}, '
            b'"history": [5, {"created_by": ["x"]}], "os": 3}',
            id="wrong-types",
        ),
        pytest.param(b"\xff\xfe not json", id="not-utf8"),
    ],
)
async def test_image_and_repository_pages_render_any_config_blob(
    site: tuple[Registry, httpx.AsyncClient], config: bytes
) -> None:
    registry, client = site
    await push_image(registry, "jimo/odd", "1.0.0", config)
    image = await client.get("/r/jimo/odd/-/tags/1.0.0")
    assert image.status_code == 200, image.text[-2000:]
    repository = await client.get("/r/jimo/odd")
    assert repository.status_code == 200, repository.text[-2000:]
    assert "1.0.0" in repository.text
    listing = await client.get("/")
    assert listing.status_code == 200 and "jimo/odd" in listing.text


async def test_a_config_field_of_the_wrong_type_is_shown_as_unreadable(
    site: tuple[Registry, httpx.AsyncClient],
) -> None:
    registry, client = site
    config = {"os": "linux", "architecture": "arm64", "history": 5, "config": {"Env": 7}}
    await push_image(registry, "jimo/odd", "1", json.dumps(config).encode())
    text = text_of(await client.get("/r/jimo/odd/-/tags/1"))
    assert "linux/arm64" in text
    assert "history: not a list" in text
    assert "config.Env: not a list of strings" in text


async def test_a_config_nested_too_deeply_is_named_as_such(
    site: tuple[Registry, httpx.AsyncClient],
) -> None:
    registry, client = site
    await push_image(registry, "jimo/deep", "1", b"[" * 100_000 + b"]" * 100_000)
    text = text_of(await client.get("/r/jimo/deep/-/tags/1"))
    assert "The config blob cannot be read: its JSON is nested too deeply." in text


config_keys = st.sampled_from(
    [
        *("os", "architecture", "variant", "created", "author", "history", "config", "Env"),
        *("Cmd", "Entrypoint", "Labels", "ExposedPorts", "WorkingDir", "User", "created_by"),
        *("comment", "empty_layer", "rootfs", "x"),
    ]
)
json_scalars = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(config_keys, children, max_size=6)
    ),
    max_leaves=25,
)
# Image configs of any shape: an object whose fields, and its "config" object's, hold any JSON.
field_values = json_scalars | json_values
image_configs = st.dictionaries(config_keys, field_values, max_size=8) | st.fixed_dictionaries(
    {"config": st.dictionaries(config_keys, field_values, max_size=8)},
    optional={"history": field_values, "os": field_values},
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(config=image_configs | json_values)
def test_pages_render_any_json_config(tmp_path: Path, config: Any) -> None:
    asyncio.run(_render_config(tmp_path / f"run{next(_counter)}", config))


async def _render_config(data_dir: Path, config: Any) -> None:
    data_dir.mkdir()
    registry, client = await open_site(data_dir)
    try:
        async with client:
            await push_image(registry, "fuzz/app", "1", json.dumps(config).encode())
            for path in ("/r/fuzz/app/-/tags/1", "/r/fuzz/app", "/"):
                page = await client.get(path)
                assert page.status_code == 200, (path, config, page.text[-1500:])
    finally:
        await registry.metadata.close()


# -- issue 12 item 12: every page number is bounded -----------------------------------------


@pytest.mark.parametrize(
    "page", ["9223372036854775807", "9223372036854775808", "1" + "0" * 400, "-5", "x", "0"]
)
async def test_any_page_number_shows_a_page(
    site: tuple[Registry, httpx.AsyncClient], page: str
) -> None:
    registry, client = site
    await push_image(registry, "jimo/app", "1", b"{}")
    response = await client.get("/", params={"page": page})
    assert response.status_code == 200, response.text[-2000:]
    assert "jimo/app" in response.text  # beyond the last page: the last page
    assert "Page 1 of 1" in text_of(response)


# -- issue 19 item 2: an artifact looks like an artifact -------------------------------------


async def push_artifact(
    registry: Registry, name: str, tag: str, subject: tuple[str, int] | None = None
) -> str:
    """An OCI 1.1 artifact as `oras push` makes it: artifactType, the empty config, and
    layers titled with their file names."""
    files = [
        await blob(registry, name, b"weights" * 100, "application/octet-stream"),
        await blob(registry, name, b"read me\n", "text/plain"),
    ]
    for descriptor, title in zip(files, ["model.bin", "README.txt"], strict=True):
        descriptor["annotations"] = {"org.opencontainers.image.title": title}
    document: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": "application/vnd.example.model",
        "config": await blob(registry, name, b"{}", OCI_EMPTY),
        "layers": files,
    }
    if subject is not None:
        document["subject"] = {"mediaType": OCI_MANIFEST, "digest": subject[0], "size": subject[1]}
    content = json.dumps(document).encode()
    return (
        await registry.repository(name).manifests.put(tag, content, OCI_MANIFEST, IN_PROCESS)
    ).digest


async def test_artifact_page_shows_type_files_subject_and_an_oras_pull(
    site: tuple[Registry, httpx.AsyncClient],
) -> None:
    registry, client = site
    image = await push_image(registry, "jimo/model", "1.0.0", b'{"os": "linux"}')
    artifact = await push_artifact(registry, "jimo/model", "v1", subject=image)
    text = text_of(await client.get("/r/jimo/model/-/tags/v1"))
    assert "Artifact type application/vnd.example.model" in text
    assert "oras pull registry.test/jimo/model:v1" in text and "docker pull" not in text
    assert "model.bin" in text and "README.txt" in text
    assert f"Subject {image[0]}" in text
    assert "Config" not in text and "unknown" not in text
    # The image it refers to lists it among its referrers.
    image_page = await client.get(f"/r/jimo/model/-/manifests/{image[0]}")
    assert artifact[:19] in image_page.text
    assert "docker pull registry.test/jimo/model@" in text_of(image_page)
    # The repository page names the artifact type where an image has its platform.
    repository = text_of(await client.get("/r/jimo/model"))
    assert "artifact: application/vnd.example.model" in repository


async def test_repository_of_artifacts_offers_oras_pull(
    site: tuple[Registry, httpx.AsyncClient],
) -> None:
    registry, client = site
    await push_artifact(registry, "jimo/charts", "latest")
    text = text_of(await client.get("/r/jimo/charts"))
    assert "oras pull registry.test/jimo/charts:latest" in text


# -- issue 19 item 3: an index's size is what a platform pulls ------------------------------


async def test_index_shows_each_platforms_pull_size_not_its_manifests(
    site: tuple[Registry, httpx.AsyncClient],
) -> None:
    registry, client = site
    shared = os.urandom(512 * 1024)
    children = []
    for arch, extra_size in (("amd64", 1024 * 1024), ("arm64", 2 * 1024 * 1024)):
        config = json.dumps({"os": "linux", "architecture": arch}).encode()
        digest, size = await push_image(
            registry, "jimo/multi", None, config, layers=[shared, os.urandom(extra_size)]
        )
        children.append(
            {
                "mediaType": OCI_MANIFEST,
                "digest": digest,
                "size": size,
                "platform": {"os": "linux", "architecture": arch},
            }
        )
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": children}).encode()
    await registry.repository("jimo/multi").manifests.put("1.0.0", index, OCI_INDEX, IN_PROCESS)

    page = await client.get("/r/jimo/multi/-/tags/1.0.0")
    text = text_of(page)
    assert "Pull size 1.5 MiB to 2.5 MiB per platform" in text
    assert "All 2 platforms together: 3.5 MiB" in text
    rows = re.findall(r"<tr><td data-label=\"Platform\">(.*?)</tr>", page.text, re.S)
    assert len(rows) == 2
    assert "linux/amd64" in rows[0] and "1.5 MiB" in rows[0]
    assert "linux/arm64" in rows[1] and "2.5 MiB" in rows[1]
    repository = text_of(await client.get("/r/jimo/multi"))
    assert "1.5 MiB to 2.5 MiB per platform" in repository
    assert "for a multi-platform image, what one platform pulls" in repository


async def test_a_stored_manifest_the_parser_now_refuses_is_shown_with_the_reason(
    site: tuple[Registry, httpx.AsyncClient],
) -> None:
    """Manifests stay stored as pushed; should the rules tighten, the page says why."""
    registry, client = site
    content = b'{"schemaVersion": 2, "mediaType": "%s", "config": 5, "layers": []}' % (
        OCI_MANIFEST.encode()
    )
    digest = pushed_digest(content)
    pushed, _ = await push_image(registry, "jimo/old", "1", b"{}")

    def store_as_pushed_long_ago(connection: Connection) -> None:
        # As a row written under older rules would be: these bytes, under their digest.
        connection.execute(
            update(schema.manifests)
            .where(schema.manifests.c.digest == pushed)
            .values(digest=digest, content=content, size=len(content))
        )
        connection.execute(
            update(schema.tags)
            .where(schema.tags.c.manifest_digest == pushed)
            .values(manifest_digest=digest)
        )

    await registry.metadata.write(store_as_pushed_long_ago)
    for path in ("/r/jimo/old/-/tags/1", "/r/jimo/old"):
        page = await client.get(path)
        assert page.status_code == 200, page.text[-2000:]
    text = text_of(await client.get("/r/jimo/old/-/tags/1"))
    assert "This manifest cannot be shown: config must be a descriptor object" in text
    assert "cannot be parsed" in text_of(await client.get("/r/jimo/old"))


texts = st.text(max_size=20)
# Not named `annotations`: that is the `from __future__` feature's name in this module.
annotation_maps = st.none() | st.dictionaries(
    st.sampled_from(["org.opencontainers.image.title", "org.example", ""]) | texts,
    texts,
    max_size=3,
)
media_types = st.sampled_from(
    [OCI_CONFIG, OCI_EMPTY, OCI_LAYER, "application/vnd.unknown.config.v1+json", "text/plain"]
) | st.text(min_size=1, max_size=30)


@st.composite
def manifests(draw: st.DrawFn, blobs: list[dict[str, Any]], image: dict[str, Any]) -> bytes:
    """Manifests and indexes of many shapes over blobs and an image that exist."""

    def descriptor(base: dict[str, Any]) -> dict[str, Any]:
        found = {**base, "mediaType": draw(media_types)}
        extra = draw(annotation_maps)
        if extra is not None:
            found["annotations"] = extra
        if draw(st.booleans()):
            found["artifactType"] = draw(media_types)
        return found

    document: dict[str, Any] = {"schemaVersion": 2}
    if draw(st.booleans()):
        children = []
        for _ in range(draw(st.integers(0, 3))):
            child = {**image}
            if draw(st.booleans()):
                child["platform"] = draw(
                    st.dictionaries(
                        st.sampled_from(["os", "architecture", "variant", "os.version"]),
                        field_values,
                        max_size=4,
                    )
                )
            children.append(child)
        document |= {"mediaType": OCI_INDEX, "manifests": children}
    else:
        document |= {
            "mediaType": OCI_MANIFEST,
            "config": descriptor(draw(st.sampled_from(blobs))),
            "layers": [descriptor(blob) for blob in draw(st.lists(st.sampled_from(blobs)))],
        }
    if draw(st.booleans()):
        document["artifactType"] = draw(media_types)
    if draw(st.booleans()):
        document["subject"] = image
    extra = draw(annotation_maps)
    if extra is not None:
        document["annotations"] = extra
    return json.dumps(document).encode()


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_pages_render_any_accepted_manifest(tmp_path: Path, data: st.DataObject) -> None:
    asyncio.run(_render_manifest(tmp_path / f"run{next(_counter)}", data))


async def _render_manifest(data_dir: Path, data: st.DataObject) -> None:
    data_dir.mkdir()
    registry, client = await open_site(data_dir)
    try:
        async with client:
            blobs = [
                await blob(registry, "fuzz/app", content, OCI_LAYER)
                for content in (b"{}", b"[]", b'{"os": 5}', os.urandom(100))
            ]
            digest, size = await push_image(registry, "fuzz/app", "base", b"{}")
            image = {"mediaType": OCI_MANIFEST, "digest": digest, "size": size}
            content = data.draw(manifests(blobs, image))
            document = json.loads(content)
            await registry.repository("fuzz/app").manifests.put(
                "1", content, document["mediaType"], IN_PROCESS
            )
            for path in ("/r/fuzz/app/-/tags/1", f"/r/fuzz/app/-/manifests/{digest}"):
                page = await client.get(path)
                assert page.status_code == 200, (path, content, page.text[-1500:])
            assert (await client.get("/r/fuzz/app")).status_code == 200
    finally:
        await registry.metadata.close()
