"""`cangku migrate-storage` end to end: docker pushes into an embedded registry (SQLite + data
directory); the command copies it into PostgreSQL + S3 (Ceph) and back into SQLite + a new
data directory; `cangku serve` on each copy gives docker and skopeo the same digests.

Needs CANGKU_TEST_POSTGRES and CANGKU_TEST_S3 (skips without, fails under
CANGKU_REQUIRE_CLIENTS=1); marked `postgresql`, so `make test-postgresql` runs it.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from cangku.storage.s3 import S3Storage
from tests.s3 import remove_everything, s3_settings
from tests.storage.test_migrate_storage import postgresql_database

from .conftest import (
    Client,
    DockerImageBuilder,
    RegistryServerFactory,
    _cangku_program,
    pushed_digest,
    server_kind,
)

pytestmark = [pytest.mark.e2e, pytest.mark.postgresql]

PULLED_DIGEST = re.compile(r"^Digest: (sha256:[0-9a-f]{64})$", re.MULTILINE)
TLS_OFF = "--tls-verify=false"


@pytest.fixture(autouse=True)
def cangku_only() -> None:
    if server_kind() != "cangku":
        pytest.skip("cangku's own command")


def migrate(source: Path, config: Path) -> str:
    completed = subprocess.run(
        [*_cangku_program(), "migrate-storage", "--data", str(source), "--to", str(config)],
        capture_output=True,
        timeout=300,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr.decode(errors="replace")
    return completed.stdout.decode()


def test_docker_and_skopeo_pull_the_same_digests_from_each_copy(
    registry_factory: RegistryServerFactory,
    docker: Client,
    skopeo: Client,
    docker_images: DockerImageBuilder,
    tmp_path: Path,
) -> None:
    embedded = registry_factory.start()
    repository = f"{embedded.docker_host}/jimo/moved"
    pushed = {}
    for tag, layers in (("v1", 2), ("v2", 3)):
        image = docker_images.build(f"{repository}:{tag}", layers=layers)
        pushed[tag] = pushed_digest(docker.run("push", image.ref).out)
    embedded.stop()

    settings = s3_settings()
    assert settings.secret_access_key is not None
    storage = S3Storage.from_settings(settings)
    try:
        with postgresql_database() as database_url:
            scaled_data = tmp_path / "scaled-data"
            scaled_config = tmp_path / "scaled.yaml"
            scaled_config.write_text(
                f"data: {scaled_data}\n"
                f"database_url: {database_url}\n"
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
            assert "rows:" in migrate(embedded.data_dir, scaled_config)
            scaled = registry_factory.start(extra_args=["--config", str(scaled_config)])
            _pull_all(scaled.docker_host, scaled.host, pushed, docker, skopeo)
            scaled.stop()

            back_data = tmp_path / "back-data"
            back_config = tmp_path / "back.yaml"
            back_config.write_text(f"data: {back_data}\n")
            completed = subprocess.run(
                [
                    *_cangku_program(),
                    "migrate-storage",
                    "--config",
                    str(scaled_config),
                    "--to",
                    str(back_config),
                ],
                capture_output=True,
                timeout=300,
                check=False,
            )
            assert completed.returncode == 0, completed.stderr.decode(errors="replace")
    finally:
        remove_everything(storage)
    back = registry_factory.start(extra_args=["--data", str(back_data)])
    _pull_all(back.docker_host, back.host, pushed, docker, skopeo)


def _pull_all(
    docker_host: str, host: str, pushed: dict[str, str], docker: Client, skopeo: Client
) -> None:
    for tag, digest in pushed.items():
        inspected = skopeo.run(
            "inspect", TLS_OFF, "--format", "{{.Digest}}", f"docker://{host}/jimo/moved:{tag}"
        ).out.strip()
        assert inspected == digest
        ref = f"{docker_host}/jimo/moved:{tag}"
        docker.run("rmi", "--force", ref, check=False)
        pulled = PULLED_DIGEST.search(docker.run("pull", ref).out)
        assert pulled, ref
        assert pulled.group(1) == digest
        docker.run("rmi", "--force", ref, check=False)
