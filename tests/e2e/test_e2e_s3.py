"""docker push / pull through `cangku serve` keeping blobs in S3 (the Ceph RGW of tests/s3.py),
with blob GETs streamed through cangku and redirected to pre-signed URLs."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from cangku.storage.s3 import S3Storage
from tests.s3 import remove_everything, s3_settings

from .conftest import Client, DockerImageBuilder, RegistryServerFactory, pushed_digest, server_kind

pytestmark = pytest.mark.e2e

PULLED_DIGEST = re.compile(r"^Digest: (sha256:[0-9a-f]{64})$", re.MULTILINE)
BLOB_GET = re.compile(r"GET /v2/jimo/s3app/blobs/sha256:[0-9a-f]{64} (\d{3}) ")


@pytest.fixture(autouse=True)
def cangku_only() -> None:
    if server_kind() != "cangku":
        pytest.skip("cangku's own S3 storage driver")


@pytest.mark.parametrize("redirect", [False, True], ids=["streamed", "redirect"])
def test_docker_push_and_pull_with_blobs_in_s3(
    redirect: bool,
    registry_factory: RegistryServerFactory,
    docker: Client,
    docker_images: DockerImageBuilder,
    tmp_path: Path,
) -> None:
    settings = s3_settings(redirect=redirect)
    assert settings.secret_access_key is not None
    config = tmp_path / "config-s3.yaml"
    config.write_text(
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
        f"    redirect: {'true' if redirect else 'false'}\n"
    )
    storage = S3Storage.from_settings(settings)
    try:
        server = registry_factory.start(extra_args=["--config", str(config)])
        repository = f"{server.docker_host}/jimo/s3app"
        ref = f"{repository}:v1"
        base = docker_images.build(f"{repository}:base", layers=2)
        # One layer larger than a multipart part (8 MiB), so the push spans several parts.
        context = tmp_path / "large"
        context.mkdir()
        large = os.urandom(12 * 1024 * 1024 + 321)
        (context / "large.bin").write_bytes(large)
        (context / "Dockerfile").write_text(f"FROM {base.ref}\nCOPY large.bin /e2e/large.bin\n")
        docker_images.tags.append(ref)
        docker.run("build", "--quiet", "--tag", ref, str(context))
        image = docker.json("image", "inspect", ref)[0]
        docker_images.image_ids.append(image["Id"])

        digest = pushed_digest(docker.run("push", ref).out)

        # The bytes are in the bucket, none in the data directory.
        stored = {key for key in _keys(storage) if key.startswith("blobs/sha256/")}
        assert len(stored) == len(image["RootFS"]["Layers"]) + 1  # layers and the config
        assert not (server.data_dir / "blobs").exists() or not any(
            path.is_file() for path in (server.data_dir / "blobs").rglob("*")
        )
        assert not [key for key in _keys(storage) if key.startswith("uploads/")]

        docker.run("rmi", ref, f"{repository}:base")
        pull = docker.run("pull", ref).out
        match = PULLED_DIGEST.search(pull)
        assert match, pull
        assert match.group(1) == digest
        assert docker.json("image", "inspect", ref)[0]["Id"] == image["Id"]
        assert docker_images.read_file(ref, "/e2e/large.bin") == large

        log = server.log_path.read_text(errors="replace")
        statuses = {status for status in BLOB_GET.findall(log)}
        assert statuses == ({"307"} if redirect else {"200"}), statuses
    finally:
        remove_everything(storage)


def _keys(storage: S3Storage) -> list[str]:
    paginator = storage.client.get_paginator("list_objects_v2")
    return [
        entry["Key"][len(storage.prefix) :]
        for page in paginator.paginate(Bucket=storage.bucket, Prefix=storage.prefix)
        for entry in page.get("Contents", [])
    ]
