"""`cangku gc`, `cangku usage` and `cangku quota` on a data directory."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cangku import cli
from cangku.metadata.store import MetadataStore, sqlite_url
from cangku.registry import Registry
from cangku.registry.context import IN_PROCESS
from cangku.storage.filesystem import FilesystemStorage

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    yield data


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def populate(data_dir: Path) -> dict[str, int]:
    """jimo/app:v1 (config + layer) and one stray blob; returns sizes by role."""

    async def push() -> dict[str, int]:
        data_dir.mkdir(exist_ok=True)
        metadata = MetadataStore.open(sqlite_url(data_dir))
        registry = Registry(FilesystemStorage(data_dir), metadata)
        config, layer, stray = b'{"os":"linux"}', os.urandom(3000), os.urandom(777)
        for blob in (config, layer, stray):
            await registry.repository("jimo/app").blobs.upload(
                digest_of(blob), _chunks(blob), len(blob), IN_PROCESS
            )
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {
                    "mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": digest_of(config),
                    "size": len(config),
                },
                "layers": [
                    {
                        "mediaType": "application/vnd.oci.image.layer.v1.tar",
                        "digest": digest_of(layer),
                        "size": len(layer),
                    }
                ],
            }
        ).encode()
        await registry.repository("jimo/app").manifests.put(
            "v1", manifest, OCI_MANIFEST, IN_PROCESS
        )
        await metadata.close()
        return {"stray": len(stray), "image": len(config) + len(layer) + len(manifest)}

    return asyncio.run(push())


def test_gc_dry_run_lists_and_counts_without_deleting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    sizes = populate(data)

    assert cli.main(["gc", "--data", str(data), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "would delete 0 manifests, 0 blobs" in out  # within the default 1h grace

    assert cli.main(["gc", "--data", str(data), "--dry-run", "--grace", "0"]) == 0
    out = capsys.readouterr().out
    assert f"{sizes['stray']} bytes" in out
    assert out.count("blob      sha256:") == 1
    assert f"would free {sizes['stray']} bytes" in out
    assert len(list((data / "blobs" / "sha256").glob("*/*"))) == 3

    assert cli.main(["gc", "--data", str(data), "--grace", "0s"]) == 0
    out = capsys.readouterr().out
    assert "deleted 0 manifests, 1 blobs" in out and f"{sizes['stray']} bytes" in out
    assert len(list((data / "blobs" / "sha256").glob("*/*"))) == 2


def test_gc_reads_the_same_configuration_as_serve(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "data"
    populate(data)
    config = tmp_path / "cangku.yaml"
    config.write_text(f"data: {data}\ngc:\n  grace: 0\n")

    assert cli.main(["gc", "--config", str(config), "--dry-run"]) == 0
    assert "grace period 0: would delete 0 manifests, 1 blobs" in capsys.readouterr().out

    monkeypatch.setenv("CANGKU_GC__GRACE", "2h")
    assert cli.main(["gc", "--config", str(config), "--dry-run"]) == 0
    assert "grace period 2h: would delete 0 manifests, 0 blobs" in capsys.readouterr().out


def test_gc_refuses_a_bad_configuration_or_duration(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "cangku.yaml"
    config.write_text("gc:\n  untagged: sometimes\n")
    assert cli.main(["gc", "--config", str(config), "--data", str(tmp_path)]) == 2
    assert "invalid configuration" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["gc", "--data", str(tmp_path), "--grace", "soon"])


def test_usage_prints_a_table_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    sizes = populate(data)

    assert cli.main(["usage", "--data", str(data)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["NAMESPACE", "/", "REPOSITORY"]
    assert lines[1].startswith("jimo ")
    assert lines[2].split()[:4] == ["jimo/app", "1", "1", "3"]
    assert lines[-1].startswith("total")

    assert cli.main(["usage", "--data", str(data), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["deduplicated_bytes"] == sizes["image"] + sizes["stray"]


def test_quota_set_list_and_unset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    populate(data)

    assert cli.main(["quota", "set", "jimo", "10GiB", "--data", str(data)]) == 0
    assert "quota of jimo: 10.0 GiB (10737418240 bytes)" in capsys.readouterr().out
    assert cli.main(["quota", "list", "--data", str(data)]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert listed[1].split()[0] == "jimo" and "10737418240" in listed[1]

    assert cli.main(["usage", "--data", str(data)]) == 0
    assert "10.0 GiB (0% used)" in capsys.readouterr().out

    assert cli.main(["quota", "unset", "jimo", "--data", str(data)]) == 0
    assert cli.main(["quota", "unset", "jimo", "--data", str(data)]) == 1
    assert "has no quota" in capsys.readouterr().err
    assert cli.main(["quota", "set", "jimo/app", "1G", "--data", str(data)]) == 2
    with pytest.raises(SystemExit):
        cli.main(["quota", "set", "jimo", "lots", "--data", str(data)])
