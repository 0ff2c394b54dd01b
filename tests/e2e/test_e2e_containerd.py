"""containerd (its `ctr` client: a registry client of its own, not docker's) pulls and
pushes through cangku, with and without accounts."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterator

import pytest

from .conftest import (
    DOCKER_MANIFEST,
    Client,
    DockerImageBuilder,
    RegistryServer,
    RegistryServerFactory,
    http_client,
    pushed_digest,
    server_kind,
)

pytestmark = pytest.mark.e2e


class Containerd:
    """ctr with the images this test made, removed afterwards."""

    def __init__(self, ctr: Client) -> None:
        self.ctr = ctr
        self.refs: list[str] = []

    def run(self, *args: str, check: bool = True) -> str:
        result = self.ctr.run(*args, check=check)
        return result.out + result.err

    def pull(self, ref: str, *extra: str) -> None:
        self.refs.append(ref)
        self.run("images", "pull", "--plain-http", *extra, ref)

    def tag(self, source: str, target: str) -> None:
        self.refs.append(target)
        self.run("images", "tag", "--force", source, target)

    def digest(self, ref: str) -> str:
        for line in self.run("images", "ls").splitlines():
            fields = line.split()
            if fields and fields[0] == ref:
                return next(field for field in fields if field.startswith("sha256:"))
        raise AssertionError(f"{ref} is not among containerd's images")

    def cleanup(self) -> None:
        for ref in self.refs:
            self.run("images", "rm", ref, check=False)


@pytest.fixture
def containerd(ctr: Client) -> Iterator[Containerd]:
    images = Containerd(ctr)
    try:
        yield images
    finally:
        images.cleanup()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def pushed_by_docker(
    registry: RegistryServer, docker: Client, docker_images: DockerImageBuilder, name: str
) -> tuple[str, str]:
    """An image docker pushed to `registry`: its reference for ctr, and its digest."""
    docker_ref = f"{registry.docker_host}/{name}:1.0"
    docker_images.build(docker_ref, layers=2)
    return f"{registry.host}/{name}:1.0", pushed_digest(docker.run("push", docker_ref).out)


def manifest_digest(registry: RegistryServer, name: str, tag: str, **headers: str) -> str:
    with http_client() as client:
        response = client.head(
            f"{registry.url}/v2/{name}/manifests/{tag}",
            headers={"Accept": DOCKER_MANIFEST, **headers},
        )
    assert response.status_code == 200, response.status_code
    return response.headers["Docker-Content-Digest"]


def test_containerd_pulls_what_docker_pushed_and_pushes_a_copy(
    registry: RegistryServer,
    docker: Client,
    docker_images: DockerImageBuilder,
    containerd: Containerd,
) -> None:
    name = f"jimo/{unique('ctr')}"
    ref, digest = pushed_by_docker(registry, docker, docker_images, name)

    containerd.pull(ref)  # fetches, verifies and unpacks every layer
    assert containerd.digest(ref) == digest

    copy_name = f"jimo/{unique('ctr-copy')}"
    copy_ref = f"{registry.host}/{copy_name}:2.0"
    containerd.tag(ref, copy_ref)
    containerd.run("images", "push", "--plain-http", copy_ref)
    assert manifest_digest(registry, copy_name, "2.0") == digest
    if server_kind() == "cangku":
        # containerd mounts the layers from the repository it pulled them from.
        assert f"POST /v2/{copy_name}/blobs/uploads/ 201" in registry.log_tail(100_000)


@pytest.fixture
def accounts_server(registry_factory: RegistryServerFactory) -> RegistryServer:
    if server_kind() != "cangku":
        pytest.skip("accounts are cangku's: the reference registry runs without them here")
    server = registry_factory.start(auth=True)
    server.cangku_cli("user", "add", "jimo", "--password-stdin", input=b"jimo-ctr-password\n")
    return server


def test_containerd_logs_in_with_token_auth_and_stays_in_its_namespace(
    registry: RegistryServer,
    accounts_server: RegistryServer,
    docker: Client,
    docker_images: DockerImageBuilder,
    containerd: Containerd,
) -> None:
    ref, digest = pushed_by_docker(registry, docker, docker_images, f"jimo/{unique('src')}")
    containerd.pull(ref)
    credentials = "jimo:jimo-ctr-password"

    own = f"{accounts_server.host}/jimo/app:1.0"
    containerd.tag(ref, own)
    containerd.run("images", "push", "--plain-http", "--user", credentials, own)
    basic = {"Authorization": "Basic " + base64.b64encode(credentials.encode()).decode()}
    assert manifest_digest(accounts_server, "jimo/app", "1.0", **basic) == digest

    others = f"{accounts_server.host}/lee/app:1.0"
    containerd.tag(ref, others)
    denied = containerd.ctr.run(
        "images", "push", "--plain-http", "--user", credentials, others, check=False
    )
    assert denied.returncode != 0, "a push into another user's namespace must be refused"

    containerd.run("images", "rm", own)
    containerd.pull(own, "--user", credentials)
    assert containerd.digest(own) == digest
    containerd.run("images", "rm", own)
    anonymous = containerd.ctr.run("images", "pull", "--plain-http", own, check=False)
    assert anonymous.returncode != 0, "a private repository must not be pulled anonymously"
