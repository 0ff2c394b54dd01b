"""Issue 19: `skopeo sync` between two cangku servers copies every tag as the source has it,
also when the source's `latest` is not its newest release (docs/tags.md, "Mirroring and
syncing")."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest

from .conftest import (
    MANIFEST_ACCEPT,
    Client,
    OciLayout,
    RegistryServer,
    RegistryServerFactory,
    http_client,
    server_kind,
)

pytestmark = pytest.mark.e2e

TLS_OFF = ("--src-tls-verify=false", "--dest-tls-verify=false")


@pytest.fixture
def servers(registry_factory: RegistryServerFactory) -> tuple[RegistryServer, RegistryServer]:
    if server_kind() != "cangku":
        pytest.skip("floating tags are a cangku feature")
    return registry_factory.start(), registry_factory.start()


def tags_of(server: RegistryServer, repository: str) -> dict[str, str]:
    with http_client() as client:
        listed = client.get(f"{server.url}/v2/{repository}/tags/list")
        assert listed.status_code == 200, listed.text
        return {
            tag: client.head(
                f"{server.url}/v2/{repository}/manifests/{tag}",
                headers={"Accept": MANIFEST_ACCEPT},
            ).headers["Docker-Content-Digest"]
            for tag in listed.json()["tags"]
        }


def push(
    skopeo: Client,
    layout: OciLayout,
    server: RegistryServer,
    repository: str,
    tags: dict[str, str],
) -> dict[str, str]:
    """Push tag → image name of `layout`, in the order given; returns tag → digest."""
    for tag, image in tags.items():
        skopeo.run(
            "copy",
            "--dest-tls-verify=false",
            f"oci:{layout.path}:{image}",
            f"docker://{server.host}/{repository}:{tag}",
        )
    return {tag: layout.manifest_digest(image) for tag, image in tags.items()}


@pytest.fixture
def images(oci_layout: Callable[[str], OciLayout]) -> OciLayout:
    layout = oci_layout("releases")
    for name in ("one", "two"):
        descriptor = layout.add_image(architecture="amd64", files={name: os.urandom(1024)})
        layout.tag(descriptor, name)
    return layout


def test_sync_copies_a_latest_that_is_not_the_newest_release(
    servers: tuple[RegistryServer, RegistryServer], skopeo: Client, images: OciLayout
) -> None:
    """The source (floating on) has `latest` at 1.0.0 while 2.0.0 exists: a client pushed
    it there. The mirror (floating on) ends up with exactly the source's tags."""
    source, mirror = servers
    push(skopeo, images, source, "jimo/app", {"1.0.0": "one", "2.0.0": "two", "latest": "one"})
    expected = tags_of(source, "jimo/app")
    assert set(expected) == {"1", "1.0", "1.0.0", "2", "2.0", "2.0.0", "latest"}
    assert expected["latest"] == expected["1.0.0"] != expected["2.0.0"]
    skopeo.run(
        "sync",
        "--src",
        "docker",
        "--dest",
        "docker",
        *TLS_OFF,
        f"{source.host}/jimo/app",
        f"{mirror.host}/mirror",
    )
    assert tags_of(mirror, "mirror/app") == expected


def test_sync_from_a_registry_without_floating_tags_is_exact_into_a_floating_off_namespace(
    servers: tuple[RegistryServer, RegistryServer], skopeo: Client, images: OciLayout
) -> None:
    """The issue's case: the source has only 1.0.0, 2.0.0 and latest → 1.0.0. Into a
    namespace with floating tags off, the copy is exact; with them on, the sync succeeds too
    (nothing is refused), latest is the source's, and the registry adds 1, 1.0, 2, 2.0."""
    source, mirror = servers
    source.cangku_cli("namespace", "policy", "plain", "--floating", "off")
    mirror.cangku_cli("namespace", "policy", "mirror", "--floating", "off")
    expected = push(
        skopeo, images, source, "plain/app", {"1.0.0": "one", "2.0.0": "two", "latest": "one"}
    )
    assert tags_of(source, "plain/app") == expected
    for namespace in ("mirror", "floating"):
        skopeo.run(
            "sync",
            "--src",
            "docker",
            "--dest",
            "docker",
            *TLS_OFF,
            f"{source.host}/plain/app",
            f"{mirror.host}/{namespace}",
        )
    assert tags_of(mirror, "mirror/app") == expected
    floating = tags_of(mirror, "floating/app")
    assert {tag: floating[tag] for tag in expected} == expected
    assert set(floating) - set(expected) == {"1", "1.0", "2", "2.0"}
