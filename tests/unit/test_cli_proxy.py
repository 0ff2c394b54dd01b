"""`cangku proxy purge` and eviction in `cangku gc` on a data directory (issue 13)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cangku import cli
from cangku.metadata.store import MetadataStore, sqlite_url
from cangku.registry import Registry
from cangku.registry.context import IN_PROCESS
from cangku.storage.filesystem import FilesystemStorage

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
CACHED = ["docker.io/library/alpine", "docker.io/library/busybox", "ghcr.io/team/tool"]


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    yield data


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def populate(data_dir: Path) -> None:
    """An image in each of CACHED (as the cache would hold them) and in local jimo/app."""

    async def push() -> None:
        data_dir.mkdir(exist_ok=True)
        metadata = MetadataStore.open(sqlite_url(data_dir))
        registry = Registry(FilesystemStorage(data_dir), metadata)
        for name in [*CACHED, "jimo/app"]:
            config, layer = json.dumps({"salt": os.urandom(4).hex()}).encode(), os.urandom(999)
            for blob in (config, layer):
                await registry.repository(name).blobs.upload(
                    _digest(blob), _chunks(blob), len(blob), IN_PROCESS
                )
            manifest = json.dumps(
                {
                    "schemaVersion": 2,
                    "mediaType": OCI_MANIFEST,
                    "config": {
                        "mediaType": "application/vnd.oci.image.config.v1+json",
                        "digest": _digest(config),
                        "size": len(config),
                    },
                    "layers": [
                        {
                            "mediaType": "application/vnd.oci.image.layer.v1.tar",
                            "digest": _digest(layer),
                            "size": len(layer),
                        }
                    ],
                }
            ).encode()
            await registry.repository(name).manifests.put("1", manifest, OCI_MANIFEST, IN_PROCESS)
        await metadata.close()

    asyncio.run(push())


def tagged(data_dir: Path) -> list[str]:
    async def read() -> list[str]:
        metadata = MetadataStore.open(sqlite_url(data_dir))
        registry = Registry(FilesystemStorage(data_dir), metadata)
        names = []
        for name in [*CACHED, "jimo/app"]:
            if (await registry.repository(name).tags.list(100, None)).items:
                names.append(name)
        await metadata.close()
        return names

    return asyncio.run(read())


@pytest.fixture
def config(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    populate(data)
    config = tmp_path / "cangku.yaml"
    config.write_text(
        f"data: {data}\n"
        "gc:\n  grace: 0\n"
        "proxy:\n"
        "  upstreams:\n"
        "    - {name: docker.io, url: 'https://registry-1.docker.io'}\n"
        "    - {name: ghcr.io, url: 'https://ghcr.io'}\n"
    )
    return config


def test_purge_of_one_mirror_repository_then_of_a_whole_upstream(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    assert cli.main(["proxy", "purge", "docker.io/library/alpine", "--config", str(config)]) == 0
    assert "purged docker.io/library/alpine" in capsys.readouterr().out
    assert tagged(data) == [*CACHED[1:], "jimo/app"]
    assert cli.main(["proxy", "purge", "docker.io", "--config", str(config)]) == 0
    assert "purged 1 cached repositories" in capsys.readouterr().out
    assert tagged(data) == ["ghcr.io/team/tool", "jimo/app"]
    # Garbage collection frees the purged images' blobs: two repositories, two blobs each.
    before = len(list((data / "blobs" / "sha256").glob("*/*")))
    assert cli.main(["gc", "--config", str(config)]) == 0
    assert len(list((data / "blobs" / "sha256").glob("*/*"))) == before - 4


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("jimo/app", "not under a configured upstream"),
        ("jimo", "not under a configured upstream"),
        ("docker.io/library/nothing", "nothing is cached"),
        ("Docker.io/../x", "invalid"),
    ],
)
def test_purge_refuses_local_repositories_and_unknown_names(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], target: str, message: str
) -> None:
    assert cli.main(["proxy", "purge", target, "--config", str(config)]) == 1
    assert message in capsys.readouterr().err.lower()
    assert tagged(tmp_path / "data") == [*CACHED, "jimo/app"]


def test_gc_evicts_what_proxy_evict_after_says_and_a_dry_run_only_lists(
    config: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = tmp_path / "data"
    config.write_text(config.read_text() + "  evict_after: 1d\n")
    later = time.time() + 2 * 86400
    monkeypatch.setattr(time, "time", lambda: later)
    assert cli.main(["gc", "--config", str(config), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.count("evict     ") == 3 and "would evict 3 cached manifests" in out
    assert tagged(data) == [*CACHED, "jimo/app"]
    assert cli.main(["gc", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "evicted 3 cached manifests" in out and "deleted 0 manifests, 6 blobs" in out
    assert tagged(data) == ["jimo/app"]


def test_gc_with_no_grace_still_keeps_what_was_read_minutes_ago(
    config: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Cached (and so last used) just now; gc.grace is 0 in this configuration: the
    # protection window is still five minutes, so a pull in progress keeps its image.
    config.write_text(config.read_text() + "  evict_after: 1s\n")
    later = time.time() + 60
    monkeypatch.setattr(time, "time", lambda: later)
    assert cli.main(["gc", "--config", str(config)]) == 0
    assert "evicted 0 cached manifests" in capsys.readouterr().out
    assert tagged(tmp_path / "data") == [*CACHED, "jimo/app"]
    later += 300
    assert cli.main(["gc", "--config", str(config)]) == 0
    assert "evicted 3 cached manifests" in capsys.readouterr().out
