"""docker push / pull against a real registry process."""

from __future__ import annotations

import json
import re

import pytest

from .conftest import (
    DOCKER_MANIFEST,
    Client,
    DockerImageBuilder,
    RegistryServer,
    http_client,
    pushed_digest,
)

pytestmark = pytest.mark.e2e

PULLED_DIGEST = re.compile(r"^Digest: (sha256:[0-9a-f]{64})$", re.MULTILINE)


def test_docker_push_then_pull_round_trips_digest(
    registry: RegistryServer, docker: Client, docker_images: DockerImageBuilder
) -> None:
    repository = f"{registry.docker_host}/jimo/app"
    ref = f"{repository}:v1.1"
    image = docker_images.build(ref, layers=3)
    assert len(image.layers) >= 4

    digest = pushed_digest(docker.run("push", ref).out)
    pushed = docker.json("image", "inspect", ref)[0]
    assert f"{repository}@{digest}" in pushed["RepoDigests"]

    docker.run("rmi", ref)
    gone = docker.run("image", "inspect", image.image_id, check=False)
    assert gone.returncode != 0, "the image should be gone locally before the pull"

    pull = docker.run("pull", ref).out
    match = PULLED_DIGEST.search(pull)
    assert match, f"no digest in docker pull output:\n{pull}"
    assert match.group(1) == digest

    pulled = docker.json("image", "inspect", ref)[0]
    assert pulled["Id"] == image.image_id  # the config blob came back byte for byte
    assert pulled["RootFS"]["Layers"] == image.layers  # and so did every layer
    assert f"{repository}@{digest}" in pulled["RepoDigests"]
    for path, content in image.files.items():
        assert docker_images.read_file(ref, path) == content, path

    # The same image by digest.
    by_digest = docker.run("pull", f"{repository}@{digest}").out
    assert digest in by_digest
    assert docker.json("image", "inspect", f"{repository}@{digest}")[0]["Id"] == image.image_id


def test_docker_push_of_shared_layers_to_another_repository_mounts_them(
    registry: RegistryServer, docker: Client, docker_images: DockerImageBuilder
) -> None:
    base_ref = f"{registry.docker_host}/jimo/base-a:1"
    base = docker_images.build(base_ref, layers=2)
    first_push = docker.run("push", base_ref).out
    assert "Mounted from" not in first_push

    # Built on the pushed image: its layers are known to come from jimo/base-a.
    other_ref = f"{registry.docker_host}/jimo/other:1"
    other = docker_images.build(other_ref, layers=1, base=base_ref)
    assert other.layers[: len(base.layers)] == base.layers
    second_push = docker.run("push", other_ref).out
    assert "Mounted from jimo/base-a" in second_push, second_push
    assert "Pushed" in second_push, second_push  # the one new layer
    other_digest = pushed_digest(second_push)

    # Every layer is now served from jimo/other itself.
    with http_client(base_url=registry.url) as client:
        response = client.get(
            f"/v2/jimo/other/manifests/{other_digest}", headers={"Accept": DOCKER_MANIFEST}
        )
        assert response.status_code == 200, response.text
        manifest = json.loads(response.content)
        assert len(manifest["layers"]) == len(other.layers)
        for layer in manifest["layers"]:
            head = client.head(f"/v2/jimo/other/blobs/{layer['digest']}")
            assert head.status_code == 200, layer
            assert int(head.headers["Content-Length"]) == layer["size"]

    docker.run("rmi", other_ref)
    docker.run("pull", other_ref)
    assert docker.json("image", "inspect", other_ref)[0]["Id"] == other.image_id
