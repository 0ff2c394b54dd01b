"""Pull statistics with real clients (issue 17): docker pull by tag and by digest counts,
`skopeo inspect` and HEAD requests do not."""

from __future__ import annotations

from typing import Any

import pytest

from .conftest import (
    MANIFEST_ACCEPT,
    Client,
    DockerImageBuilder,
    RegistryServer,
    http_client,
    pushed_digest,
)

pytestmark = pytest.mark.e2e

TLS_OFF = "--tls-verify=false"


def pulls(registry: RegistryServer, name: str) -> dict[str, Any]:
    with http_client(base_url=registry.url) as client:
        response = client.get(f"/api/v1/repositories/{name}/pulls")
        assert response.status_code == 200, response.text
        document: dict[str, Any] = response.json()
        return document


def test_docker_pulls_by_tag_and_digest_count_skopeo_inspect_and_head_do_not(
    registry: RegistryServer, docker: Client, skopeo: Client, docker_images: DockerImageBuilder
) -> None:
    if registry.kind != "cangku":
        pytest.skip("pull statistics are cangku's")
    repository = f"{registry.docker_host}/stats/app"
    ref = f"{repository}:1.0.0"
    image = docker_images.build(ref, layers=1)
    digest = pushed_digest(docker.run("push", ref).out)
    assert pulls(registry, "stats/app")["pulls"] == 0  # a push is no pull

    docker.run("rmi", ref)
    docker.run("pull", ref)  # HEAD by tag, then GET by digest
    counted = pulls(registry, "stats/app")
    assert counted["tags"]["1.0.0"]["pulls"] == 1
    assert counted["manifests"][digest]["pulls"] == 1

    # docker asks the registry nothing for a digest it has pulled before: a manifest it has
    # never seen (skopeo converts the image on its way from the daemon; skopeo copy is no
    # pull) is pulled by digest.
    skopeo.run(
        "copy",
        "--dest-tls-verify=false",
        f"docker-daemon:{image.ref}",
        f"docker://{repository}:copy",
    )
    copy_digest = skopeo.run(
        "inspect", TLS_OFF, "--format", "{{.Digest}}", f"docker://{repository}:copy"
    ).out.strip()
    assert copy_digest != digest
    docker.run("pull", f"{repository}@{copy_digest}")
    counted = pulls(registry, "stats/app")
    assert counted["manifests"][copy_digest]["pulls"] == 1
    assert "copy" not in counted["tags"]  # by digest: no tag pulled
    assert counted["pulls"] == 2

    skopeo.run("inspect", TLS_OFF, f"docker://{repository}:1.0.0")
    skopeo.run("inspect", TLS_OFF, "--raw", f"docker://{repository}@{digest}")
    with http_client(base_url=registry.url) as client:
        for reference in ("1.0.0", digest):
            head = client.head(
                f"/v2/stats/app/manifests/{reference}", headers={"Accept": MANIFEST_ACCEPT}
            )
            assert head.status_code == 200
    assert pulls(registry, "stats/app") == counted
