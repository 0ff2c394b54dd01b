"""skopeo copies and multi-arch indexes against a real registry process."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from .conftest import (
    MANIFEST_ACCEPT,
    OCI_INDEX,
    OCI_MANIFEST,
    Client,
    DockerImageBuilder,
    OciLayout,
    RegistryServer,
    http_client,
    sha256_digest,
)

pytestmark = pytest.mark.e2e

TLS_OFF = "--tls-verify=false"


def registry_digest(skopeo: Client, reference: str) -> str:
    digest: str = skopeo.run("inspect", TLS_OFF, "--format", "{{.Digest}}", reference).out.strip()
    return digest


def raw_manifest(skopeo: Client, reference: str) -> bytes:
    return skopeo.run("inspect", TLS_OFF, "--raw", reference).stdout


@dataclass
class MultiArchIndex:
    reference: str  # docker://host/repo:tag it was pushed to
    repository: str
    index: bytes
    index_digest: str
    children: dict[str, dict[str, Any]]  # architecture -> manifest descriptor
    layout: OciLayout


@pytest.fixture
def multi_arch_index(
    registry: RegistryServer, skopeo: Client, oci_layout: Callable[[str], OciLayout]
) -> MultiArchIndex:
    """An amd64 + arm64 OCI index built by hand, pushed with `skopeo copy --all`."""
    layout = oci_layout("multi")
    children = {
        architecture: layout.add_image(
            architecture=architecture, files={f"etc/{architecture}.bin": os.urandom(2048)}
        )
        for architecture in ("amd64", "arm64")
    }
    index_descriptor = layout.add_index(list(children.values()))
    layout.tag(index_descriptor, "1.0")
    repository = f"{registry.host}/jimo/multi-{os.urandom(4).hex()}"
    reference = f"docker://{repository}:1.0"
    skopeo.run("copy", "--all", "--dest-tls-verify=false", f"oci:{layout.path}:1.0", reference)
    return MultiArchIndex(
        reference=reference,
        repository=repository,
        index=layout.blob(index_descriptor["digest"]),
        index_digest=index_descriptor["digest"],
        children=children,
        layout=layout,
    )


def test_skopeo_pushed_multi_arch_index_comes_back_byte_identical(
    registry: RegistryServer, skopeo: Client, multi_arch_index: MultiArchIndex
) -> None:
    assert raw_manifest(skopeo, multi_arch_index.reference) == multi_arch_index.index

    # The same over plain HTTP: media type and digest header of the index itself.
    path = multi_arch_index.repository.removeprefix(registry.host)
    with http_client(base_url=registry.url) as client:
        response = client.get(f"/v2{path}/manifests/1.0", headers={"Accept": MANIFEST_ACCEPT})
        assert response.status_code == 200, response.text
        assert response.content == multi_arch_index.index
        assert response.headers["Content-Type"] == OCI_INDEX
        assert response.headers["Docker-Content-Digest"] == multi_arch_index.index_digest


@pytest.mark.parametrize("architecture", ["arm64", "amd64"])
def test_skopeo_resolves_each_platform_of_a_multi_arch_index(
    skopeo: Client, multi_arch_index: MultiArchIndex, architecture: str
) -> None:
    child = multi_arch_index.children[architecture]
    layout = multi_arch_index.layout
    manifest = json.loads(layout.blob(child["digest"]))

    inspected = json.loads(
        skopeo.run(
            "inspect",
            TLS_OFF,
            "--override-os",
            "linux",
            "--override-arch",
            architecture,
            multi_arch_index.reference,
        ).stdout
    )
    assert inspected["Architecture"] == architecture
    assert inspected["Os"] == "linux"
    assert inspected["Layers"] == [layer["digest"] for layer in manifest["layers"]]

    by_digest = f"docker://{multi_arch_index.repository}@{child['digest']}"
    assert raw_manifest(skopeo, by_digest) == layout.blob(child["digest"])


def test_docker_manifest_inspect_lists_both_platforms_of_a_pushed_index(
    registry: RegistryServer, docker: Client, multi_arch_index: MultiArchIndex
) -> None:
    # docker's name for the same repository: localhost instead of 127.0.0.1.
    name = multi_arch_index.repository.replace(registry.host, registry.docker_host)
    index = docker.json("manifest", "inspect", "--insecure", f"{name}:1.0")
    assert index["mediaType"] == OCI_INDEX
    platforms = {entry["platform"]["architecture"]: entry["digest"] for entry in index["manifests"]}
    assert platforms == {
        architecture: child["digest"] for architecture, child in multi_arch_index.children.items()
    }


def test_skopeo_copy_daemon_to_registry_to_layout_and_back_preserves_digests(
    registry: RegistryServer,
    skopeo: Client,
    docker_images: DockerImageBuilder,
    tmp_path: Path,
) -> None:
    repository = f"{registry.host}/jimo/skopeo-{os.urandom(4).hex()}"
    image = docker_images.build(f"cangku-e2e-local:{os.urandom(6).hex()}", layers=2)

    # docker daemon -> registry (Docker schema 2, layers compressed by skopeo on the way).
    source = f"docker://{repository}/from-daemon:1"
    skopeo.run("copy", "--dest-tls-verify=false", f"docker-daemon:{image.ref}", source)
    source_digest = registry_digest(skopeo, source)
    source_manifest = raw_manifest(skopeo, source)
    assert sha256_digest(source_manifest) == source_digest
    manifest = json.loads(source_manifest)
    assert manifest["config"]["digest"] == image.image_id  # the daemon's config, unchanged
    assert len(manifest["layers"]) == len(image.layers)

    # registry -> another repository of the same registry: nothing to convert, same digest.
    copy = f"docker://{repository}/copy:1"
    skopeo.run("copy", "--src-tls-verify=false", "--dest-tls-verify=false", f"{source}", copy)
    assert registry_digest(skopeo, copy) == source_digest
    assert raw_manifest(skopeo, copy) == source_manifest

    # registry -> OCI layout: converted to an OCI manifest (and config), same layer blobs.
    layout = OciLayout(tmp_path / "layout")
    skopeo.run("copy", "--src-tls-verify=false", copy, f"oci:{layout.path}:1")
    layout_digest = layout.manifest_digest("1")
    layout_manifest = json.loads(layout.blob(layout_digest))
    assert layout_manifest["mediaType"] == OCI_MANIFEST
    assert [layer["digest"] for layer in layout_manifest["layers"]] == [
        layer["digest"] for layer in manifest["layers"]
    ]

    # OCI layout -> registry -> OCI layout: the OCI manifest keeps its digest both ways.
    from_layout = f"docker://{repository}/from-layout:1"
    skopeo.run("copy", "--dest-tls-verify=false", f"oci:{layout.path}:1", from_layout)
    assert registry_digest(skopeo, from_layout) == layout_digest
    assert raw_manifest(skopeo, from_layout) == layout.blob(layout_digest)
    again = OciLayout(tmp_path / "layout-again")
    skopeo.run("copy", "--src-tls-verify=false", from_layout, f"oci:{again.path}:1")
    assert again.manifest_digest("1") == layout_digest
    for layer in layout_manifest["layers"]:
        assert sha256_digest(again.blob(layer["digest"])) == layer["digest"]
