"""podman, a third real client: login, push, pull by a floating tag, OCI format, denial."""

from __future__ import annotations

import os
import subprocess
import tarfile
import uuid
from pathlib import Path

import pytest

from .conftest import RegistryServer, RegistryServerFactory, RequireClient, server_kind

pytestmark = pytest.mark.e2e
PASSWORD = f"jimo-{uuid.uuid4().hex[:16]}"


Podman = tuple[list[str], dict[str, str]]


@pytest.fixture
def podman(require_client: RequireClient, tmp_path: Path) -> Podman:
    """The podman command, and an environment with an auth file of this test's own."""
    binary = require_client("podman")
    return [binary, "--log-level", "error"], {"REGISTRY_AUTH_FILE": str(tmp_path / "auth.json")}


def run(
    podman: tuple[list[str], dict[str, str]], *args: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    command, env = podman
    result = subprocess.run(
        [*command, *args],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, **env},
        stdin=subprocess.DEVNULL,
        check=False,
    )
    if check:
        assert result.returncode == 0, f"podman {' '.join(args)}: {result.stdout}{result.stderr}"
    return result


def test_podman_login_push_and_pull_by_floating_tag(
    registry_factory: RegistryServerFactory,
    podman: tuple[list[str], dict[str, str]],
    tmp_path: Path,
) -> None:
    if server_kind() != "cangku":
        pytest.skip("accounts and floating tags are cangku's")
    server: RegistryServer = registry_factory.start(auth=True)
    server.cangku_cli("user", "add", "jimo", "--password-stdin", input=f"{PASSWORD}\n".encode())
    server.cangku_cli("user", "add", "lee", "--password-stdin", input=f"{PASSWORD}\n".encode())
    host = server.host
    local = f"localhost/cangku-e2e-podman:{uuid.uuid4().hex[:8]}"
    rootfs = tmp_path / "rootfs.tar"
    with tarfile.open(rootfs, "w") as tar:
        payload = tmp_path / "payload.bin"
        payload.write_bytes(os.urandom(4096))
        tar.add(payload, arcname="payload.bin")
    image_id = run(podman, "import", str(rootfs), local).stdout.strip().splitlines()[-1]
    try:
        refused = run(
            podman,
            "login",
            "--tls-verify=false",
            "-u",
            "jimo",
            "-p",
            "wrong-password",
            host,
            check=False,
        )
        assert refused.returncode != 0
        login = run(podman, "login", "--tls-verify=false", "-u", "jimo", "-p", PASSWORD, host)
        assert "Login Succeeded" in login.stdout
        run(podman, "push", "--tls-verify=false", local, f"{host}/jimo/app:1.4.2")
        run(
            podman,
            "push",
            "--tls-verify=false",
            "--format",
            "oci",
            local,
            f"{host}/jimo/app-oci:1.0.0",
        )
        denied = run(
            podman, "push", "--tls-verify=false", local, f"{host}/lee/app:1.0.0", check=False
        )
        assert denied.returncode != 0
        assert "403 (forbidden)" in denied.stderr.lower() or "denied" in denied.stderr.lower()

        run(podman, "rmi", "--force", local)
        pulled = run(podman, "pull", "--tls-verify=false", f"{host}/jimo/app:1")  # floating tag
        assert image_id.removeprefix("sha256:")[:12] in pulled.stdout
        run(podman, "pull", "--tls-verify=false", f"{host}/jimo/app-oci:latest")
    finally:
        for reference in (local, f"{host}/jimo/app:1", f"{host}/jimo/app-oci:latest"):
            run(podman, "rmi", "--force", reference, check=False)
