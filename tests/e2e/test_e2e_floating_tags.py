"""Floating tags with the real docker: push only versions, pull 1, 1.9, 2 and latest."""

from __future__ import annotations

import pytest

from .conftest import Client, DockerImageBuilder, RegistryServer, server_kind

pytestmark = pytest.mark.e2e


def test_docker_pull_of_floating_tags_gives_the_newest_release_of_each_line(
    registry: RegistryServer, docker: Client, docker_images: DockerImageBuilder
) -> None:
    if server_kind() != "cangku":
        pytest.skip("floating tags are a cangku feature")
    repository = f"{registry.docker_host}/jimo/floating"
    image_ids = {}
    for version in ("1.9.1", "1.9.2", "2.0.0", "1.9.3"):
        ref = f"{repository}:{version}"
        image_ids[version] = docker_images.build(ref, layers=1).image_id
        docker.run("push", ref)
        docker.run("rmi", ref)

    expected = {"1": "1.9.3", "1.9": "1.9.3", "2": "2.0.0", "2.0": "2.0.0", "latest": "2.0.0"}
    for floating, version in expected.items():
        ref = f"{repository}:{floating}"
        docker_images.tags.append(ref)  # removed again after the test
        docker.run("pull", ref)
        pulled = docker.json("image", "inspect", ref)[0]["Id"]
        assert pulled == image_ids[version], f"{floating} should be {version}"
        docker.run("rmi", ref)

    # A push of a floating tag over the policy's choice (a back-port) succeeds; the tag is
    # then client-managed until released with the CLI.
    docker.run("pull", f"{repository}:1.9.1")
    docker_images.tags.append(f"{repository}:1.9.1")
    docker.run("tag", f"{repository}:1.9.1", f"{repository}:latest")
    docker.run("push", f"{repository}:latest")
    docker.run("rmi", f"{repository}:latest")
    docker.run("pull", f"{repository}:latest")
    assert docker.json("image", "inspect", f"{repository}:latest")[0]["Id"] == image_ids["1.9.1"]
    docker.run("rmi", f"{repository}:latest")
    released = registry.cangku_cli("repo", "release-tag", "jimo/floating", "latest")
    assert b"jimo/floating:latest follows 2.0.0 now" in released.stdout
    docker.run("pull", f"{repository}:latest")
    assert docker.json("image", "inspect", f"{repository}:latest")[0]["Id"] == image_ids["2.0.0"]
