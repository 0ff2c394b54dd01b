"""Three `cangku serve` replicas sharing PostgreSQL and Ceph (S3), behind Debian's nginx as the
load balancer (issue 15): docker pushes through the balancer and pulls from each replica; a
chunked upload moves between replicas; a replica killed mid-push; garbage collection on one
replica while the others take pushes.

Needs CANGKU_TEST_POSTGRES (a role that may create databases) and CANGKU_TEST_S3, and nginx:
each missing one skips, or fails with CANGKU_REQUIRE_CLIENTS=1. `make test-postgresql` runs
this file (`make test` has no PostgreSQL, and leaves it out).
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from cangku.storage.s3 import S3Storage
from tests.databases import POSTGRES_ADMIN_URL, fresh_database
from tests.s3 import remove_everything, s3_settings

from .conftest import (
    CLIENT_COMMAND_TIMEOUT,
    Client,
    DockerImageBuilder,
    RegistryServer,
    RegistryServerFactory,
    RequireClient,
    free_loopback_port,
    http_client,
    pushed_digest,
    server_kind,
    sha256_digest,
)

pytestmark = [pytest.mark.e2e, pytest.mark.postgresql]

MiB = 1024 * 1024


@dataclass
class Cluster:
    replicas: list[RegistryServer]
    balancer_port: int
    config: Path
    storage: S3Storage

    @property
    def balancer(self) -> str:
        return f"http://127.0.0.1:{self.balancer_port}"

    @property
    def docker_host(self) -> str:
        return f"localhost:{self.balancer_port}"

    def logs(self) -> str:
        return "\n".join(r.log_path.read_text(errors="replace") for r in self.replicas)


def _require_postgresql() -> str:
    if not POSTGRES_ADMIN_URL:
        message = "no PostgreSQL for the replicas: CANGKU_TEST_POSTGRES is not set"
        if os.environ.get("CANGKU_REQUIRE_CLIENTS") == "1":
            pytest.fail(f"{message} (CANGKU_REQUIRE_CLIENTS=1; `make test-postgresql` sets it)")
        pytest.skip(message)
    return POSTGRES_ADMIN_URL


NGINX_CONFIG = """\
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log {prefix}/access.log;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    upstream cangku {{
{servers}
    }}
    server {{
        listen 127.0.0.1:{port};
        client_max_body_size 0;
        location / {{
            proxy_pass http://cangku;
            proxy_http_version 1.1;
            proxy_set_header Host $http_host;
            proxy_request_buffering off;
            proxy_buffering off;
            proxy_read_timeout 300s;
            proxy_send_timeout 300s;
            # A dead replica: the next one, for requests whose body was not sent yet.
            proxy_next_upstream error timeout http_502;
        }}
    }}
}}
"""


@pytest.fixture
def cluster(
    registry_factory: RegistryServerFactory, require_client: RequireClient, tmp_path: Path
) -> Iterator[Cluster]:
    if server_kind() != "cangku":
        pytest.skip("cangku's own replicas")
    admin = _require_postgresql()
    settings = s3_settings()
    nginx = require_client("nginx")
    assert admin and settings.secret_access_key is not None
    storage = S3Storage.from_settings(settings)
    with fresh_database(tmp_path, migrated=False) as database_url:
        config = tmp_path / "replicas.yaml"
        config.write_text(
            f"database_url: {database_url}\n"
            "gc: {interval: 0}\n"
            "storage:\n"
            "  driver: s3\n"
            "  s3:\n"
            f"    bucket: {settings.bucket}\n"
            f"    prefix: {settings.prefix}\n"
            f"    endpoint: {settings.endpoint}\n"
            f"    region: {settings.region}\n"
            "    path_style: true\n"
            f"    access_key_id: {settings.access_key_id}\n"
            f"    secret_access_key: {settings.secret_access_key.get_secret_value()}\n"
        )
        # A shared database is migrated once, by `cangku db upgrade`: serve refuses it before.
        upgrade = subprocess.run(
            [*_cangku(), "db", "upgrade", "--config", str(config), "--data", str(tmp_path / "u")],
            capture_output=True,
            timeout=120,
            check=False,
        )
        assert upgrade.returncode == 0, upgrade.stderr.decode(errors="replace")
        prefix = tmp_path / "nginx"
        prefix.mkdir()
        prefix.chmod(0o777)  # nginx's workers run as nobody
        nginx_process: subprocess.Popen[bytes] | None = None
        try:
            replicas = [
                registry_factory.start(extra_args=["--config", str(config)]) for _ in range(3)
            ]
            port = free_loopback_port()
            servers = "\n".join(
                f"        server {r.host} max_fails=1 fail_timeout=30s;" for r in replicas
            )
            nginx_config = prefix / "nginx.conf"
            nginx_config.write_text(NGINX_CONFIG.format(prefix=prefix, port=port, servers=servers))
            with (prefix / "stderr.log").open("wb") as nginx_log:
                nginx_process = subprocess.Popen(
                    [
                        nginx,
                        "-p",
                        str(prefix),
                        "-e",
                        str(prefix / "error.log"),
                        "-c",
                        str(nginx_config),
                        "-g",
                        "daemon off;",
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=nginx_log,
                    start_new_session=True,
                )
            _wait_for(f"http://127.0.0.1:{port}/v2/", nginx_process, prefix)
            yield Cluster(replicas, port, config, storage)
        finally:
            if nginx_process is not None:
                os.killpg(nginx_process.pid, signal.SIGTERM)
                nginx_process.wait(timeout=15)
            registry_factory.stop_all()
            remove_everything(storage)


def _cangku() -> list[str]:
    from .conftest import _cangku_program

    return _cangku_program()


def _wait_for(url: str, process: subprocess.Popen[bytes], prefix: Path) -> None:
    deadline = time.monotonic() + 20
    with http_client(timeout=1.0) as client:
        while time.monotonic() < deadline:
            assert process.poll() is None, (prefix / "stderr.log").read_text()
            try:
                if client.get(url).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
    pytest.fail(f"nginx did not answer on {url}: {(prefix / 'error.log').read_text()}")


def _served_by(replica: RegistryServer, pattern: str) -> int:
    return len(re.findall(pattern, replica.log_path.read_text(errors="replace")))


def test_docker_pushes_through_the_balancer_and_pulls_from_each_replica(
    cluster: Cluster, docker: Client, docker_images: DockerImageBuilder
) -> None:
    ref = f"{cluster.docker_host}/jimo/app:1.9.3"
    image = docker_images.build(ref, layers=3)
    digest = pushed_digest(docker.run("push", ref).out)
    # Round robin: the push's requests were spread over the replicas.
    assert (
        sum(_served_by(r, r'"?(?:PATCH|PUT|POST) /v2/jimo/app/') > 0 for r in cluster.replicas) >= 2
    )
    docker.run("rmi", ref)
    for replica in cluster.replicas:
        pulled = f"{replica.docker_host}/jimo/app:1.9.3"
        docker_images.tags.append(pulled)
        out = docker.run("pull", pulled).out
        assert digest in out
        assert docker.json("image", "inspect", pulled)[0]["Id"] == image.image_id
        for path, content in image.files.items():
            assert docker_images.read_file(pulled, path) == content
        docker.run("rmi", pulled)


def test_a_chunked_upload_moves_between_replicas_and_its_digest_is_verified(
    cluster: Cluster,
) -> None:
    # Chunks below, above and across the 8 MiB multipart part, each on another replica: the
    # session's bytes and state live in Ceph and PostgreSQL, none in a replica's memory.
    data = os.urandom(23 * MiB + 12345)
    chunks = [data[: 6 * MiB], data[6 * MiB : 6 * MiB + 100_000], data[6 * MiB + 100_000 :]]
    urls = [r.url for r in cluster.replicas]
    with http_client(timeout=120.0) as client:
        started = client.post(f"{urls[0]}/v2/jimo/chunked/blobs/uploads/")
        assert started.status_code == 202, started.text
        location = started.headers["location"]
        path = location if location.startswith("/") else httpx.URL(location).raw_path.decode()
        offset = 0
        for index, chunk in enumerate(chunks):
            replica = urls[(index + 1) % 3]
            patched = client.patch(
                f"{replica}{path}",
                content=chunk,
                headers={
                    "Content-Type": "application/octet-stream",
                    "Content-Range": f"{offset}-{offset + len(chunk) - 1}",
                },
            )
            assert patched.status_code == 202, (replica, patched.text)
            offset += len(chunk)
            assert patched.headers["range"] == f"0-{offset - 1}"
            path = httpx.URL(patched.headers["location"]).raw_path.decode()
        # A wrong digest on yet another replica is refused, and nothing becomes a blob.
        wrong = sha256_digest(data[:-1])
        refused = client.put(f"{urls[2]}{path}", params={"digest": wrong})
        assert refused.status_code == 400, refused.text
        assert refused.json()["errors"][0]["code"] == "DIGEST_INVALID"
        assert client.head(f"{urls[0]}/v2/jimo/chunked/blobs/{wrong}").status_code == 404

        # The same bytes again through the balancer (which alternates), with the right digest.
        started = client.post(f"{cluster.balancer}/v2/jimo/chunked/blobs/uploads/")
        path = httpx.URL(started.headers["location"]).raw_path.decode()
        offset = 0
        for chunk in chunks:
            patched = client.patch(
                f"{cluster.balancer}{path}",
                content=chunk,
                headers={"Content-Range": f"{offset}-{offset + len(chunk) - 1}"},
            )
            assert patched.status_code == 202, patched.text
            offset += len(chunk)
            path = httpx.URL(patched.headers["location"]).raw_path.decode()
        digest = sha256_digest(data)
        finished = client.put(f"{cluster.balancer}{path}", params={"digest": digest})
        assert finished.status_code == 201, finished.text
        for url in urls:
            fetched = client.get(f"{url}/v2/jimo/chunked/blobs/{digest}")
            assert fetched.status_code == 200
            assert hashlib.sha256(fetched.content).hexdigest() == digest.split(":")[1]
    patches = [_served_by(r, r"PATCH /v2/jimo/chunked/") for r in cluster.replicas]
    assert all(count >= 1 for count in patches), patches


def test_two_patches_for_one_session_on_two_replicas_at_once_refuse_the_second_with_its_range(
    cluster: Cluster,
) -> None:
    # Issue 15: while one replica appends to a session (its lease row held), a PATCH of the
    # same session on another replica is refused with 416 and the Range stored so far, never
    # appended from the same offset (which silently dropped one of the two chunks before).
    urls = [r.url for r in cluster.replicas]
    head, chunk = os.urandom(MiB), os.urandom(9 * MiB)  # the chunk: a whole part and a tail
    half = len(chunk) // 2
    sent_half, go = threading.Event(), threading.Event()
    answers: dict[str, httpx.Response] = {}

    def held_body() -> Iterator[bytes]:
        yield chunk[:half]
        sent_half.set()
        go.wait(60)
        yield chunk[half:]

    range_of_chunk = f"{len(head)}-{len(head) + len(chunk) - 1}"
    with http_client(timeout=120.0) as client:
        started = client.post(f"{urls[0]}/v2/jimo/racing/blobs/uploads/")
        assert started.status_code == 202, started.text
        path = httpx.URL(started.headers["location"]).raw_path.decode()
        patched = client.patch(
            f"{urls[0]}{path}", content=head, headers={"Content-Range": f"0-{len(head) - 1}"}
        )
        assert patched.status_code == 202, patched.text
        path = httpx.URL(patched.headers["location"]).raw_path.decode()

        def slow_patch() -> None:
            with http_client(timeout=120.0) as other:
                answers["slow"] = other.patch(
                    f"{urls[1]}{path}",
                    content=held_body(),
                    headers={"Content-Range": range_of_chunk, "Content-Length": str(len(chunk))},
                )

        slow = threading.Thread(target=slow_patch)
        slow.start()
        try:
            assert sent_half.wait(30)
            time.sleep(0.5)  # the replica has taken the lease and is reading the body
            racing = client.patch(
                f"{urls[2]}{path}",
                content=b"o" * len(chunk),
                headers={"Content-Range": range_of_chunk},
            )
        finally:
            go.set()
            slow.join(120)
        assert racing.status_code == 416, racing.text
        assert racing.json()["errors"][0]["code"] == "BLOB_UPLOAD_INVALID"
        assert racing.headers["range"] == f"0-{len(head) - 1}"
        assert answers["slow"].status_code == 202, answers["slow"].text
        assert answers["slow"].headers["range"] == f"0-{len(head) + len(chunk) - 1}"

        digest = sha256_digest(head + chunk)
        finished = client.put(f"{urls[2]}{path}", params={"digest": digest})
        assert finished.status_code == 201, finished.text
        fetched = client.get(f"{urls[0]}/v2/jimo/racing/blobs/{digest}")
        assert fetched.status_code == 200 and fetched.content == head + chunk


def test_a_replica_killed_mid_push_and_the_retry_through_another_succeeds(
    cluster: Cluster, docker: Client, docker_images: DockerImageBuilder, tmp_path: Path
) -> None:
    base = docker_images.build(f"{cluster.docker_host}/jimo/big:base", layers=1)
    context = tmp_path / "big"
    context.mkdir()
    steps = [f"FROM {base.ref}"]
    for index in range(3):
        (context / f"big-{index}.bin").write_bytes(os.urandom(24 * MiB))
        steps.append(f"COPY big-{index}.bin /e2e/big-{index}.bin")
    (context / "Dockerfile").write_text("\n".join(steps) + "\n")
    ref = f"{cluster.docker_host}/jimo/big:1.0.0"
    docker_images.tags.append(ref)
    docker.run("build", "--quiet", "--tag", ref, str(context))
    image_id = docker.json("image", "inspect", ref)[0]["Id"]
    docker_images.image_ids.append(image_id)

    push = subprocess.Popen(
        [docker.binary, "push", ref],
        env=docker.env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    # The first replica seen starting an upload of this push dies (SIGKILL: a crash).
    deadline = time.monotonic() + 120
    victim = None
    while victim is None and time.monotonic() < deadline and push.poll() is None:
        for replica in cluster.replicas:
            if _served_by(replica, r"POST /v2/jimo/big/blobs/uploads/"):
                victim = replica
                break
        time.sleep(0.05)
    assert victim is not None, "the push started no upload"
    victim.kill()
    assert push.poll() is None, "the push was over before the replica died"
    out, _ = push.communicate(timeout=CLIENT_COMMAND_TIMEOUT)
    assert push.returncode == 0, out.decode(errors="replace")
    digest = pushed_digest(out.decode())

    survivor = next(r for r in cluster.replicas if r is not victim)
    docker.run("rmi", ref)
    pulled = f"{survivor.docker_host}/jimo/big:1.0.0"
    docker_images.tags.append(pulled)
    assert digest in docker.run("pull", pulled).out
    assert docker.json("image", "inspect", pulled)[0]["Id"] == image_id
    victim.start()  # Back, on the same database and bucket: it serves the image too.
    with http_client() as client:
        manifest = client.get(
            f"{victim.url}/v2/jimo/big/manifests/1.0.0",
            headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"},
        )
    assert manifest.status_code == 200


def test_garbage_collection_on_one_replica_while_the_others_take_pushes(
    cluster: Cluster, docker: Client, docker_images: DockerImageBuilder
) -> None:
    # Garbage: a blob no manifest references.
    garbage = os.urandom(70_000)
    with http_client() as client:
        posted = client.post(
            f"{cluster.replicas[0].url}/v2/jimo/gc/blobs/uploads/",
            params={"digest": sha256_digest(garbage)},
            content=garbage,
        )
        assert posted.status_code == 201
    # `cangku gc` as replica 0's machine would run it, in a loop, with no grace period, while
    # docker pushes through replicas 1 and 2. A push whose fresh layers are collected before
    # its manifest arrives fails cleanly (MANIFEST_BLOB_UNKNOWN, or BLOB_UPLOAD_INVALID for a
    # layer whose file the collector deleted as it finished) and is pushed again, as CI
    # would; nothing a finished push stored may be lost.
    collector = subprocess.Popen(
        [
            "sh",
            "-c",
            f"for i in $(seq 200); do {' '.join(_cangku())} gc --grace 0 --config {cluster.config}"
            f" --data {cluster.replicas[0].data_dir} || exit 1; done",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    pushed: dict[str, tuple[str, str]] = {}
    try:
        for index in range(4):
            replica = cluster.replicas[1 + index % 2]
            ref = f"{replica.docker_host}/jimo/gc:{index}.0.0"
            image = docker_images.build(ref, layers=2)
            for _attempt in range(4):
                result = subprocess.run(
                    [docker.binary, "push", ref],
                    env=docker.env,
                    capture_output=True,
                    timeout=CLIENT_COMMAND_TIMEOUT,
                    check=False,
                )
                if result.returncode == 0:
                    pushed[ref] = (pushed_digest(result.stdout.decode()), image.image_id)
                    break
                # The two clean failures of a push racing a collector with no grace period:
                # a manifest whose fresh layer was collected first, or a layer whose file
                # the collector deleted before its upload could record it.
                failure = result.stderr.decode().lower()
                assert "blob unknown" in failure or "garbage-collected" in failure, failure
            assert ref in pushed, f"{ref} did not push in 4 attempts"
    finally:
        os.killpg(collector.pid, signal.SIGTERM)
        collector_output = collector.communicate(timeout=60)[0].decode(errors="replace")
    assert "deleted" in collector_output, collector_output
    assert re.search(r"deleted \d+ manifests, [1-9]\d* blobs", collector_output), collector_output
    for ref, (digest, image_id) in pushed.items():
        docker.run("rmi", ref)
        for replica in cluster.replicas:
            pulled = f"{replica.docker_host}/{ref.split('/', 1)[1]}"
            docker_images.tags.append(pulled)
            assert digest in docker.run("pull", pulled).out
            assert docker.json("image", "inspect", pulled)[0]["Id"] == image_id
            docker.run("rmi", pulled)
