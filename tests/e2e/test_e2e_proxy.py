"""The pull-through cache (issue 13, docs/proxy.md) with real clients and real upstreams.

Upstreams on loopback, never the internet: a cangku with token authentication stands in for
docker.io (public `library/*` repositories pushed by the admin, a private one of `bot`, whose
credentials the mirror holds), the reference registry (`docker-registry`) for ghcr.io. The
mirror is a third server (`--open`) with `CANGKU_PROXY__UPSTREAMS`. Each test pulls an image
of its own, so every pull is cold. Clients: docker (prefix path), containerd `ctr` with a
`hosts.toml` mirror (sends `?ns=docker.io`), skopeo with a `registries.conf` mirror, and a
second dockerd of the test's own with `registry-mirrors` (the shared engine is never
reconfigured or restarted).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from .conftest import (
    MANIFEST_ACCEPT,
    Client,
    OciLayout,
    RegistryServer,
    RegistryServerFactory,
    RequireClient,
    http_client,
    server_kind,
    sha256_digest,
)

pytestmark = pytest.mark.e2e

ADMIN_PASSWORD = "admin-secret-e2e"
BOT_PASSWORD = "bot-secret-e2e"
BIG_LAYER_BYTES = 48 * 1024 * 1024


@dataclass
class World:
    hub: RegistryServer  # stands in for docker.io (token auth)
    ghcr: RegistryServer  # the reference registry, standing in for ghcr.io
    mirror: RegistryServer  # the cangku under test
    skopeo: Client
    work: Path

    def publish(
        self, name: str, *, files: dict[str, bytes] | None = None, to: str = "hub"
    ) -> tuple[str, OciLayout]:
        """Push a one-layer image `name:1` upstream (public on the hub unless under bot/);
        its manifest digest and the layout it came from."""
        layout = OciLayout.create(self.work / f"layout-{uuid.uuid4().hex[:8]}")
        image = layout.add_image(
            architecture="amd64", files=files or {"e2e/data.bin": os.urandom(300_000)}
        )
        layout.tag(image, "1")
        server = self.hub if to == "hub" else self.ghcr
        if to == "hub":
            user = "bot" if name.startswith("bot/") else "admin"
            password = BOT_PASSWORD if user == "bot" else ADMIN_PASSWORD
            creds = ["--dest-creds", f"{user}:{password}"]
        else:
            creds = []
        self.skopeo.run(
            "copy",
            "--dest-tls-verify=false",
            *creds,
            f"oci:{layout.path}:1",
            f"docker://{server.host}/{name}:1",
        )
        if to == "hub" and not name.startswith("bot/"):
            self.hub.cangku_cli("repo", "set", name, "--public")
        return image["digest"], layout


def _upstreams(world_hub: RegistryServer, ghcr: RegistryServer) -> str:
    return json.dumps(
        [
            {
                "name": "docker.io",
                "url": world_hub.url,
                "default": True,
                "username": "bot",
                "password": BOT_PASSWORD,
            },
            {"name": "ghcr.io", "url": ghcr.url},
        ]
    )


@pytest.fixture(scope="module")
def world(
    tmp_path_factory: pytest.TempPathFactory, require_client: RequireClient, skopeo: Client
) -> Iterator[World]:
    if server_kind() != "cangku":
        pytest.skip("the pull-through cache is cangku's")
    require_client("docker-registry")
    work = tmp_path_factory.mktemp("e2e-proxy")
    factory = RegistryServerFactory(work)
    ghcr = RegistryServer(kind="reference", data_dir=work / "ghcr-data", log_path=work / "ghcr.log")
    try:
        hub = factory.start(auth=True, extra_env={"CANGKU_ADMIN_PASSWORD": ADMIN_PASSWORD})
        hub.cangku_cli("user", "add", "bot", "--password-stdin", input=f"{BOT_PASSWORD}\n".encode())
        ghcr.start()
        mirror = factory.start(extra_env={"CANGKU_PROXY__UPSTREAMS": _upstreams(hub, ghcr)})
        yield World(hub, ghcr, mirror, skopeo, work)
    finally:
        factory.stop_all()
        ghcr.stop()


def _name(prefix: str = "library") -> str:
    return f"{prefix}/e2e-{uuid.uuid4().hex[:10]}"


def _hub_blob_gets(world: World, name: str) -> int:
    """Blob GETs the hub's access log shows for repository `name`."""
    log = world.hub.log_path.read_text(errors="replace")
    return sum(
        1 for line in log.splitlines() if f"GET /v2/{name}/blobs/sha256:" in line and " 200" in line
    )


# --------------------------------------------------------------------------- docker


def test_docker_pulls_through_the_prefix_path(world: World, docker: Client) -> None:
    name = _name()
    digest, _ = world.publish(name)
    ref = f"{world.mirror.docker_host}/docker.io/{name}:1"
    try:
        docker.run("pull", ref)
        image = docker.json("image", "inspect", ref)[0]
        assert f"{world.mirror.docker_host}/docker.io/{name}@{digest}" in image["RepoDigests"]
    finally:
        docker.run("rmi", ref, check=False)


def test_docker_push_into_a_mirror_namespace_is_denied(world: World, docker: Client) -> None:
    name = _name()
    world.publish(name)
    source = f"{world.mirror.docker_host}/docker.io/{name}:1"
    target = f"{world.mirror.docker_host}/docker.io/{_name()}:1"
    try:
        docker.run("pull", source)
        docker.run("tag", source, target)
        pushed = docker.run("push", target, check=False)
        assert pushed.returncode != 0
        output = pushed.out + pushed.err
        assert "denied" in output and "is a mirror" in output, output
    finally:
        docker.run("rmi", target, check=False)
        docker.run("rmi", source, check=False)


# --------------------------------------------------------------------------- containerd


def test_containerd_pulls_through_a_hosts_toml_mirror_sending_ns(
    world: World, ctr: Client, tmp_path: Path
) -> None:
    name = _name()
    digest, _ = world.publish(name)
    hosts = tmp_path / "certs.d" / "docker.io"
    hosts.mkdir(parents=True)
    (hosts / "hosts.toml").write_text(
        'server = "https://registry-1.docker.io"\n\n'
        f'[host."http://{world.mirror.host}"]\n'
        '  capabilities = ["pull", "resolve"]\n'
    )
    ref = f"docker.io/{name}:1"
    try:
        ctr.run("images", "pull", "--hosts-dir", str(tmp_path / "certs.d"), ref)
        listed = ctr.run("images", "ls").out
        line = next(line for line in listed.splitlines() if line.startswith(ref + " "))
        assert digest in line, listed
    finally:
        ctr.run("images", "rm", ref, check=False)
    # What containerd sent: the name without the upstream, `ns` naming it; answered with
    # OCI-Namespace (OCI dist-spec: a registry SHOULD).
    with http_client() as client:
        answer = client.head(
            f"{world.mirror.url}/v2/{name}/manifests/1",
            params={"ns": "docker.io"},
            headers={"Accept": MANIFEST_ACCEPT},
        )
    assert answer.status_code == 200 and answer.headers["oci-namespace"] == "docker.io"
    assert answer.headers["docker-content-digest"] == digest


# --------------------------------------------------------------------------- skopeo


def test_skopeo_pulls_through_a_registries_conf_mirror_from_both_upstreams(
    world: World, tmp_path: Path
) -> None:
    hub_name = _name()
    hub_digest, _ = world.publish(hub_name)
    ghcr_name = _name("team")
    ghcr_digest, _ = world.publish(ghcr_name, to="ghcr")
    private = _name("bot")
    private_digest, _ = world.publish(private)
    conf = tmp_path / "registries.conf"
    conf.write_text(
        "unqualified-search-registries = []\n\n"
        '[[registry]]\nprefix = "docker.io"\nlocation = "docker.io"\n\n'
        f'[[registry.mirror]]\nlocation = "{world.mirror.host}"\ninsecure = true\n\n'
        '[[registry]]\nprefix = "ghcr.io"\nlocation = "ghcr.io"\n\n'
        f'[[registry.mirror]]\nlocation = "{world.mirror.host}/ghcr.io"\ninsecure = true\n'
    )
    # skopeo 1.9 ignores CONTAINERS_REGISTRIES_CONF; its (hidden) global flag works.
    skopeo = Client(
        world.skopeo.binary,
        world.skopeo.env,
        (*world.skopeo.global_args, "--registries-conf", str(conf)),
    )
    for ref, digest in (
        (f"docker.io/{hub_name}:1", hub_digest),
        (f"ghcr.io/{ghcr_name}:1", ghcr_digest),
        (f"docker.io/{private}:1", private_digest),  # with the mirror's credentials
    ):
        out = tmp_path / f"out-{uuid.uuid4().hex[:6]}"
        skopeo.run("copy", f"docker://{ref}", f"oci:{out}:1")
        assert OciLayout(out).manifest_digest("1") == digest, ref
    # Through the mirror: the private image needs no credentials of the client's own.
    assert _hub_blob_gets(world, private) == 2


# --------------------------------------------------------------------------- dockerd mirror


@dataclass
class Dockerd:
    socket: Path
    process: subprocess.Popen[bytes]
    root: Path


@pytest.fixture
def mirrored_dockerd(world: World, require_client: RequireClient) -> Iterator[Dockerd]:
    """A second dockerd of this test's own (own data root, exec root, pid file and socket;
    no bridge, no iptables) with `registry-mirrors` naming the mirror."""
    require_client("docker")
    binary = shutil.which("dockerd")
    if binary is None:
        message = "dockerd is not installed"
        if os.environ.get("CANGKU_REQUIRE_CLIENTS") == "1":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    # Short paths under /tmp: the exec root holds unix sockets (108-byte limit).
    root = Path(f"/tmp/cangku-dockerd-{uuid.uuid4().hex[:8]}")
    root.mkdir()
    config = root / "daemon.json"
    config.write_text(json.dumps({"registry-mirrors": [world.mirror.url]}))
    socket = root / "docker.sock"
    log = (root / "dockerd.log").open("wb")
    process = subprocess.Popen(
        [
            binary,
            "--config-file",
            str(config),
            "--data-root",
            str(root / "data"),
            "--exec-root",
            str(root / "exec"),
            "--pidfile",
            str(root / "docker.pid"),
            "-H",
            f"unix://{socket}",
            "--bridge=none",
            "--iptables=false",
            "--ip6tables=false",
        ],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while not socket.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert socket.exists(), (root / "dockerd.log").read_text(errors="replace")[-3000:]
        yield Dockerd(socket, process, root)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        log.close()
        shutil.rmtree(root, ignore_errors=True)


def test_dockerd_with_registry_mirrors_pulls_hub_names_through_the_default_upstream(
    world: World, mirrored_dockerd: Dockerd, docker: Client
) -> None:
    name = _name()
    digest, _ = world.publish(name)
    short = name.removeprefix("library/")
    own = Client(docker.binary, {**docker.env, "DOCKER_HOST": f"unix://{mirrored_dockerd.socket}"})
    for _ in range(50):  # the daemon answers a moment after its socket appears
        if own.run("info", check=False).returncode == 0:
            break
        time.sleep(0.2)
    # Neither `ns` nor a prefix reaches the mirror: the `default` upstream, `library/` kept.
    own.run("pull", f"{short}:1")
    image = own.json("image", "inspect", f"{short}:1")[0]
    assert f"{short}@{digest}" in image["RepoDigests"], image["RepoDigests"]
    assert _hub_blob_gets(world, name) == 2  # config and layer, once each


# --------------------------------------------------------------------------- crashes


def test_a_restart_in_the_middle_of_a_cold_pull_serves_nothing_half_cached(
    world: World, registry_factory: RegistryServerFactory
) -> None:
    big = os.urandom(BIG_LAYER_BYTES)
    name = _name()
    world.publish(name, files={"big.bin": big})
    manifest = _manifest(world.hub, name, auth=("admin", ADMIN_PASSWORD))
    layer = manifest["layers"][0]
    mirror = registry_factory.start(
        extra_env={"CANGKU_PROXY__UPSTREAMS": _upstreams(world.hub, world.ghcr)}
    )
    path = f"/v2/docker.io/{name}/blobs/{layer['digest']}"
    with http_client() as client, client.stream("GET", f"{mirror.url}{path}") as response:
        assert response.status_code == 200
        received = 0
        for chunk in response.iter_raw(256 * 1024):
            received += len(chunk)
            if received >= 4 * 1024 * 1024:
                break
        mirror.kill()  # SIGKILL in the middle of the transfer
    assert received < layer["size"]
    blob_file = mirror.data_dir / "blobs" / "sha256" / layer["digest"][7:9] / layer["digest"][7:]
    assert not blob_file.exists()
    mirror.start()
    with http_client() as client:
        again = client.get(f"{mirror.url}{path}")
    assert again.status_code == 200
    assert sha256_digest(again.content) == layer["digest"]
    assert (
        blob_file.exists()
        and hashlib.sha256(blob_file.read_bytes()).hexdigest() == (layer["digest"][7:])
    )


class _CorruptingUpstream(BaseHTTPRequestHandler):
    """A registry that serves any blob as `BLOB` with one byte flipped."""

    blob = b""

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _headers(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.blob)))
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()

    def do_HEAD(self) -> None:
        self._headers()

    def do_GET(self) -> None:
        self._headers()
        wrong = bytearray(self.blob)
        wrong[-1] ^= 1
        with contextlib.suppress(OSError):
            self.wfile.write(bytes(wrong))


def test_a_blob_corrupted_upstream_is_never_completed_for_the_client_nor_cached(
    registry_factory: RegistryServerFactory,
) -> None:
    if server_kind() != "cangku":
        pytest.skip("the pull-through cache is cangku's")
    blob = os.urandom(3 * 1024 * 1024)
    handler = type("Handler", (_CorruptingUpstream,), {"blob": blob})
    upstream = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=upstream.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{upstream.server_address[1]}"
        mirror = registry_factory.start(
            extra_env={"CANGKU_PROXY__UPSTREAMS": json.dumps([{"name": "quay.io", "url": url}])}
        )
        path = f"{mirror.url}/v2/quay.io/team/tool/blobs/{sha256_digest(blob)}"
        for _ in range(2):  # never cached: the second pull fails the same way
            received = bytearray()
            with (
                pytest.raises(httpx.RemoteProtocolError),
                http_client() as client,
                client.stream("GET", path) as response,
            ):
                assert response.status_code == 200
                for chunk in response.iter_raw():
                    received += chunk
            # The client never holds the whole (wrong) body: the last bytes were held back.
            assert len(received) < len(blob)
        stored = mirror.data_dir / "blobs" / "sha256" / sha256_digest(blob)[7:9]
        assert not stored.exists()
    finally:
        upstream.shutdown()
        upstream.server_close()


def _manifest(server: RegistryServer, name: str, auth: tuple[str, str]) -> dict[str, Any]:
    with http_client() as client:
        token = client.get(
            f"{server.url}/auth/token",
            params={"service": server.host, "scope": f"repository:{name}:pull"},
            auth=auth,
        )
        headers = {"Accept": MANIFEST_ACCEPT}
        if token.status_code == 200:
            headers["Authorization"] = f"Bearer {token.json()['token']}"
        response = client.get(f"{server.url}/v2/{name}/manifests/1", headers=headers)
    assert response.status_code == 200, response.text
    document: dict[str, Any] = response.json()
    return document
