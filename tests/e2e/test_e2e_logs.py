"""Real clients leave no warnings in the server log (issue 19 item 4): docker, podman and
skopeo try TLS on a plain-HTTP port first, which is normal, not a faulty request."""

from __future__ import annotations

import pytest

from .conftest import Client, DockerImageBuilder, RegistryServerFactory, server_kind

pytestmark = pytest.mark.e2e


def warnings_in(log: str) -> list[str]:
    return [line for line in log.splitlines() if "WARNING" in line or "Invalid HTTP" in line]


@pytest.fixture
def quiet_factory(registry_factory: RegistryServerFactory) -> RegistryServerFactory:
    if server_kind() != "cangku":
        pytest.skip("this is about cangku's own log")
    return registry_factory


def test_skopeo_sessions_leave_no_warning_in_the_log(
    quiet_factory: RegistryServerFactory, skopeo: Client
) -> None:
    server = quiet_factory.start()
    for _ in range(3):
        # Each command is a session that tries HTTPS first (--tls-verify=false allows HTTP).
        result = skopeo.run(
            "inspect", "--tls-verify=false", f"docker://{server.host}/jimo/none:1", check=False
        )
        assert "manifest unknown" in result.err or "name unknown" in result.err, result.err
    log = server.log_path.read_text(errors="replace")
    assert "GET /v2/jimo/none/manifests/1 404" in log  # the sessions did reach the server
    assert warnings_in(log) == []


def test_docker_push_and_pull_leave_no_warning_in_the_log(
    quiet_factory: RegistryServerFactory, docker: Client, docker_images: DockerImageBuilder
) -> None:
    server = quiet_factory.start()
    ref = f"{server.docker_host}/jimo/quiet:1.0.0"
    docker_images.build(ref, layers=1)
    docker.run("push", ref)
    docker.run("rmi", ref)
    docker.run("pull", ref)
    log = server.log_path.read_text(errors="replace")
    assert "PUT /v2/jimo/quiet/manifests/1.0.0 201" in log
    assert warnings_in(log) == []
