"""`cangku gc` from the command line while a real `cangku serve` takes pushes and pulls.

The same docker-like clients as tests/api/test_gc_stress.py, over real HTTP on loopback,
while two loops run `cangku gc --grace 0` again and again as separate processes on the
same data directory (each run pays Python's start-up, about a second). Afterwards skopeo
pulls some remaining tags and the data directory is checked file by file.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from cangku.metadata.schema import blobs, manifest_references
from cangku.metadata.store import MetadataStore, sqlite_url
from tests.api.helpers import pull_image
from tests.api.test_gc_stress import StressClient

from .conftest import Client, RegistryServerFactory

pytestmark = pytest.mark.e2e

STRESS_SECONDS = 5.0
CLIENTS = 3


def cangku_command() -> list[str]:
    script = Path(sys.executable).with_name("cangku")
    return [str(script)] if script.exists() else [sys.executable, "-m", "cangku"]


async def run_gc_repeatedly(data_dir: Path, deadline: float, stats: Counter[str]) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CANGKU_")}
    while time.monotonic() < deadline:
        process = await asyncio.create_subprocess_exec(
            *cangku_command(),
            "gc",
            "--data",
            str(data_dir),
            "--grace",
            "0",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        out, err = await process.communicate()
        assert process.returncode == 0, err.decode()
        assert "deleted" in out.decode()
        stats["cangku gc runs"] += 1


async def test_cangku_gc_beside_a_serving_registry_never_breaks_a_tag(
    registry_factory: RegistryServerFactory, skopeo: Client, tmp_path: Path
) -> None:
    server = registry_factory.start()
    stats: Counter[str] = Counter()
    rng = random.Random(int.from_bytes(os.urandom(4), "big"))
    shared_layers = [os.urandom(rng.randrange(500, 4000)) for _ in range(4)]
    async with httpx.AsyncClient(base_url=server.url, trust_env=False, timeout=60) as client:
        clients = [
            StressClient(number, client, shared_layers, stats, random.Random(rng.random()))
            for number in range(CLIENTS)
        ]
        deadline = time.monotonic() + STRESS_SECONDS
        await asyncio.gather(
            *(stress.run(deadline, clients) for stress in clients),
            run_gc_repeatedly(server.data_dir, deadline, stats),
            run_gc_repeatedly(server.data_dir, deadline, stats),
        )
        print(f"\ne2e stress: {dict(stats)}")
        assert stats["cangku gc runs"] >= 2 and stats["pushes"] >= 5

        await run_gc_repeatedly(server.data_dir, time.monotonic() + 0.001, stats)
        remaining = []
        for stress in clients:
            for name, tags in stress.tags.items():
                listed = (await client.get(f"/v2/{name}/tags/list")).json().get("tags") or []
                assert sorted(listed) == sorted(tags)
                for tag in tags:
                    await pull_image(client, name, tag)
                    remaining.append(f"{name}:{tag}")

    # A real client pulls what is left.
    for reference in rng.sample(remaining, min(2, len(remaining))):
        target = tmp_path / reference.replace("/", "-").replace(":", "-")
        skopeo.run(
            "copy",
            "--src-tls-verify=false",
            f"docker://{server.host}/{reference}",
            f"oci:{target}:x",
        )

    files = {f"sha256:{path.name}" for path in (server.data_dir / "blobs" / "sha256").glob("*/*")}
    for digest in files:
        path = server.data_dir / "blobs" / "sha256" / digest[7:9] / digest[7:]
        assert "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest() == digest
    metadata = MetadataStore.open(sqlite_url(server.data_dir))
    try:
        recorded = set(await metadata.read(lambda c: c.scalars(select(blobs.c.digest)).all()))
        referenced = set(
            await metadata.read(
                lambda c: c.scalars(select(manifest_references.c.target_digest)).all()
            )
        )
    finally:
        await metadata.close()
    assert recorded == files
    assert recorded <= referenced
