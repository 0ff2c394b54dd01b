"""The image (`make image`) run the way people run a registry:

    docker run -d -p 127.0.0.1:PORT:5000 -v DIR:/var/lib/registry cangku:latest

then `docker login`, tag, push, rmi, pull; a restart keeps the data; the files in DIR belong to
the container's user, the server does not run as root, and the health check turns healthy.
dockerd runs with `--bridge=none` here, so the container joins a user-defined bridge network
(ENVIRONMENT.md); every container and network made here is removed by its name.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import (
    Client,
    DockerImageBuilder,
    RequireClient,
    free_loopback_port,
    http_client,
    pushed_digest,
)

pytestmark = pytest.mark.e2e

REPO_ROOT = Path(__file__).resolve().parents[2]
IMAGE = "cangku:latest"
BASE_IMAGE = "cangku-base:bookworm"
CONTAINER_UID = 10001
PASSWORD_LINE = re.compile(r"created the account 'admin' with password (\S+)")
PULLED_DIGEST = re.compile(r"^Digest: (sha256:[0-9a-f]{64})$", re.MULTILINE)
IMAGE_BUILD_TIMEOUT = 1200.0


@pytest.fixture(scope="session")
def cangku_image(docker: Client, require_client: RequireClient) -> str:
    """`make image`, as CI and users run it (the base image is made once, by debootstrap)."""
    if docker.run("image", "inspect", BASE_IMAGE, check=False).returncode != 0:
        require_client("debootstrap")
    built = subprocess.run(
        ["make", "image"],
        cwd=REPO_ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=IMAGE_BUILD_TIMEOUT,
        check=False,
    )
    if built.returncode != 0:
        pytest.fail(
            f"`make image` exited with {built.returncode}\n"
            f"{built.stdout.decode(errors='replace')[-3000:]}\n"
            f"{built.stderr.decode(errors='replace')[-3000:]}",
            pytrace=False,
        )
    return IMAGE


class Container:
    """One `docker run -d` of the image on a network of its own, both removed by name."""

    def __init__(self, docker: Client, image: str, data_dir: Path) -> None:
        self.docker = docker
        self.image = image
        self.data_dir = data_dir
        token = uuid.uuid4().hex[:10]
        self.name = f"cangku-e2e-{token}"
        self.network = f"cangku-e2e-{token}"
        self.port = free_loopback_port()
        self.created_network = False
        self.created_container = False

    @property
    def host(self) -> str:
        return f"localhost:{self.port}"

    def run(self) -> None:
        self.docker.run("network", "create", self.network)
        self.created_network = True
        self.docker.run(
            "run",
            "--detach",
            "--name",
            self.name,
            "--network",
            self.network,
            "--publish",
            f"127.0.0.1:{self.port}:5000",
            "--volume",
            f"{self.data_dir}:/var/lib/registry",
            # The image's own HEALTHCHECK command, asked every second instead of every 30 s.
            "--health-interval",
            "1s",
            self.image,
        )
        self.created_container = True

    def health(self) -> str:
        return str(
            self.docker.run(
                "inspect", "--format", "{{.State.Health.Status}}", self.name
            ).out.strip()
        )

    def wait_until_healthy(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.health()
            if status == "healthy":
                return
            if (
                self.docker.run("inspect", "--format", "{{.State.Running}}", self.name).out.strip()
                != "true"
            ):
                break
            time.sleep(0.5)
        pytest.fail(
            f"container {self.name} not healthy ({self.health()})\n{self.logs()[-4000:]}",
            pytrace=False,
        )

    def logs(self) -> str:
        result = self.docker.run("logs", self.name, check=False)
        return result.out + result.err

    def remove(self) -> None:
        if self.created_container:
            self.docker.run("rm", "--force", "--volumes", self.name, check=False)
        if self.created_network:
            self.docker.run("network", "rm", self.network, check=False)


@pytest.fixture
def container(docker: Client, cangku_image: str, tmp_path: Path) -> Iterator[Container]:
    # Not created here: `docker run -v` creates it, as root, as it does for users.
    data_dir = tmp_path / "myregistry"
    made = Container(docker, cangku_image, data_dir)
    try:
        yield made
    finally:
        made.remove()


def test_the_image_declares_a_volume_a_port_and_a_health_check(
    docker: Client, cangku_image: str
) -> None:
    config = docker.json("image", "inspect", cangku_image)[0]["Config"]
    assert "/var/lib/registry" in config["Volumes"]
    assert "5000/tcp" in config["ExposedPorts"]
    assert "cangku.healthcheck" in " ".join(config["Healthcheck"]["Test"])
    version = (
        subprocess.run(
            ["sed", "-n", r's/^version = "\(.*\)"/\1/p', str(REPO_ROOT / "pyproject.toml")],
            capture_output=True,
            check=True,
        )
        .stdout.decode()
        .strip()
    )
    tagged = docker.json("image", "inspect", f"cangku:{version}")[0]["Id"]
    assert tagged == docker.json("image", "inspect", cangku_image)[0]["Id"]


def test_docker_run_login_push_pull_restart_as_people_run_a_registry(
    container: Container, docker: Client, docker_images: DockerImageBuilder
) -> None:
    container.run()
    container.wait_until_healthy()

    # The first password, printed once in the log and stored in the volume.
    logs = container.logs()
    printed = PASSWORD_LINE.findall(logs)
    assert len(printed) == 1, logs[-4000:]
    password = printed[0]
    assert (container.data_dir / "initial-admin-password").read_text().strip() == password

    docker.run(
        "login", container.host, "--username", "admin", "--password-stdin", input=password.encode()
    )
    try:
        ref = f"{container.host}/jimo/my-image:v1.1"
        image = docker_images.build(ref, layers=2)
        digest = pushed_digest(docker.run("push", ref).out)
        docker.run("rmi", ref)
        pulled = PULLED_DIGEST.search(docker.run("pull", ref).out)
        assert pulled and pulled.group(1) == digest
        assert docker.json("image", "inspect", ref)[0]["Id"] == image.image_id

        # The data belong to the container's user; the server does not run as root.
        owners = {
            (path.stat().st_uid, path.stat().st_gid)
            for path in [container.data_dir, *container.data_dir.rglob("*")]
        }
        assert owners == {(CONTAINER_UID, CONTAINER_UID)}
        status = docker.run("exec", container.name, "cat", "/proc/1/status").out
        uids = re.search(r"^Uid:\s+(.*)$", status, re.MULTILINE)
        assert uids and set(uids.group(1).split()) == {str(CONTAINER_UID)}
        assert "cangku" in docker.run("exec", container.name, "cat", "/proc/1/cmdline").out

        # SIGTERM (docker stop) shuts it down well within docker's 10 s; then a restart.
        started = time.monotonic()
        docker.run("stop", container.name)
        assert time.monotonic() - started < 9
        exit_code = docker.run("inspect", "--format", "{{.State.ExitCode}}", container.name)
        # PID 1 ignores the SIGTERM uvicorn raises again at the end: a clean 0.
        assert exit_code.out.strip() == "0", container.logs()[-3000:]
        docker.run("start", container.name)
        container.wait_until_healthy()
        assert len(PASSWORD_LINE.findall(container.logs())) == 1  # not a second admin

        docker.run("rmi", ref)
        again = PULLED_DIGEST.search(docker.run("pull", ref).out)
        assert again and again.group(1) == digest
        with http_client() as client:
            ready = client.get(f"http://127.0.0.1:{container.port}/readyz")
            metrics = client.get(f"http://127.0.0.1:{container.port}/metrics")
        assert ready.json() == {"status": "ok"}
        assert 'route="v2.manifest"' in metrics.text
    finally:
        docker.run("logout", container.host, check=False)


def test_compose_example_is_valid(require_client: RequireClient, tmp_path: Path) -> None:
    compose_file = REPO_ROOT / "examples" / "docker-compose.yml"
    command = compose_command(require_client)
    validated = subprocess.run(
        [*command, "--file", str(compose_file), "config"],
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        env={**os.environ, "CANGKU_DB_PASSWORD": "example"},
        timeout=120,
        check=False,
    )
    assert validated.returncode == 0, validated.stderr.decode(errors="replace")
    text = validated.stdout.decode()
    assert "cangku" in text and "postgres" in text


def compose_command(require_client: RequireClient) -> list[str]:
    """`docker compose` (the plugin) where it exists, else Debian's `docker-compose`."""
    docker = shutil.which("docker")
    if docker is not None:
        plugin = subprocess.run(
            [docker, "compose", "version"], capture_output=True, timeout=30, check=False
        )
        if plugin.returncode == 0:
            return [docker, "compose"]
    return [require_client("docker-compose")]
