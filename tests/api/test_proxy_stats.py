"""Issue 13/14: what the pull-through cache counts: per upstream at /metrics (never the
repository as a label), per repository in the pull statistics' batches (the pages, and
eviction's last use). The upstream is a second cangku in-process."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from cangku.config import ProxySettings
from cangku.metadata.proxy_cache import mirror_repositories
from cangku.registry import Registry
from tests.api.helpers import OCI_MANIFEST, pull_image, push_image
from tests.api.proxy_upstream import Gate, Mirror, mirror_of_upstream

REVALIDATE = 300.0
Setup = Mirror[Gate]


@pytest.fixture
async def setup(registry: Registry, data_dir: Path, tmp_path: Path) -> AsyncIterator[Setup]:
    proxy = ProxySettings.model_validate(
        {
            "upstreams": [
                {"name": "docker.io", "url": "http://up.test", "revalidate": REVALIDATE},
                {"name": "ghcr.io", "url": "http://127.0.0.1:9"},
            ]
        }
    )
    async with mirror_of_upstream(registry, data_dir, tmp_path / "upstream", proxy, Gate) as mirror:
        yield mirror


async def _get(client: httpx.AsyncClient, path: str) -> httpx.Response:
    return await client.get(path, headers={"Accept": OCI_MANIFEST})


def _metric(text: str, name: str, labels: str) -> float:
    match = re.search(rf"^{name}\{{{re.escape(labels)}\}} (\S+)$", text, re.MULTILINE)
    assert match is not None, f"{name}{{{labels}}} not in the exposition"
    return float(match[1])


async def test_hits_misses_checks_and_stale_are_counted_per_upstream_and_repository(
    setup: Setup,
) -> None:
    first, content = await push_image(setup.upstream, "library/alpine", "3")
    path = "/v2/docker.io/library/alpine/manifests/3"
    assert (await _get(setup.mirror, path)).status_code == 200  # new tag: a check, a miss
    await _get(setup.mirror, path)  # within revalidate: a hit
    await _get(setup.mirror, f"/v2/docker.io/library/alpine/manifests/{first}")  # a hit
    setup.clock.now += REVALIDATE
    await _get(setup.mirror, path)  # checked, unchanged: a hit
    moved, _ = await push_image(setup.upstream, "library/alpine", "3")
    setup.clock.now += REVALIDATE
    await _get(setup.mirror, path)  # checked, moved: a miss
    setup.clock.now += REVALIDATE
    setup.gate.down = True
    stale = await _get(setup.mirror, path)  # checked, failed: served stale (a hit)
    assert stale.status_code == 200 and "warning" in stale.headers

    counts = setup.stats.upstreams["docker.io"]
    assert (counts.hits, counts.misses, counts.served_stale) == (4, 2, 1)
    assert counts.revalidations == 4
    assert counts.fetched_bytes == len(content) * 2  # two manifests of the same length
    exposition = (await setup.mirror.get("/metrics")).text
    assert _metric(exposition, "cangku_proxy_cache_hits_total", 'upstream="docker.io"') == 4
    assert _metric(exposition, "cangku_proxy_cache_misses_total", 'upstream="docker.io"') == 2
    assert _metric(exposition, "cangku_proxy_cache_hits_total", 'upstream="ghcr.io"') == 0
    assert _metric(exposition, "cangku_proxy_served_stale_total", 'upstream="docker.io"') == 1
    assert (
        _metric(exposition, "cangku_proxy_upstream_fetched_bytes_total", 'upstream="docker.io"')
        == counts.fetched_bytes
    )
    for outcome, expected in (("new", 1), ("unchanged", 1), ("moved", 1), ("failed", 1)):
        labels = f'outcome="{outcome}",upstream="docker.io"'
        assert _metric(exposition, "cangku_proxy_revalidations_total", labels) == expected
    assert "library/alpine" not in exposition  # never the repository as a label

    # Per repository, through the pull statistics' batch (nothing written before a flush).
    rows = await setup.registry.metadata.read(lambda c: mirror_repositories(c, "docker.io"))
    assert [(r.name, r.hits, r.misses) for r in rows] == [("docker.io/library/alpine", 0, 0)]
    await setup.registry.pulls.flush()
    rows = await setup.registry.metadata.read(lambda c: mirror_repositories(c, "docker.io"))
    assert [(r.name, r.manifests, r.hits, r.misses) for r in rows] == [
        ("docker.io/library/alpine", 2, 4, 2)
    ]
    assert rows[0].checked_at is not None and rows[0].last_read_at is not None
    assert moved


async def test_blob_bytes_from_the_upstream_are_counted_once_verified(setup: Setup) -> None:
    _, content = await push_image(setup.upstream, "library/busybox", "1")
    layers = json.loads(content)["layers"]
    manifest_bytes = setup.stats.upstreams["docker.io"].fetched_bytes
    for layer in layers:
        path = f"/v2/docker.io/library/busybox/blobs/{layer['digest']}"
        assert (await setup.mirror.get(path)).status_code == 200
        assert (await setup.mirror.get(path)).status_code == 200  # cached: nothing fetched
    fetched = setup.stats.upstreams["docker.io"].fetched_bytes - manifest_bytes
    assert fetched == sum(layer["size"] for layer in layers)


async def test_a_warm_pull_asks_neither_the_upstream_nor_the_database(setup: Setup) -> None:
    """Issue 13's warm pull: within `revalidate`, the manifest by tag and every blob come
    from the cache with no upstream request and no database write (hits and last use are
    batched in memory); on SQLite not even a read (the read cache). What it counted is
    exact once flushed."""
    await push_image(setup.upstream, "library/alpine", "3")
    name = "docker.io/library/alpine"
    await pull_image(setup.mirror, name, "3")  # cold: fetched and cached
    await pull_image(setup.mirror, name, "3")  # warms the read cache
    metadata = setup.registry.metadata
    transactions: list[str] = []
    observer = metadata.on_transaction

    def record(kind: str, seconds: float) -> None:
        transactions.append(kind)
        if observer is not None:
            observer(kind, seconds)

    metadata.on_transaction = record
    requests = len(setup.gate.requests)
    hits = setup.stats.upstreams["docker.io"].hits
    try:
        for _ in range(3):
            await pull_image(setup.mirror, name, "3")
    finally:
        metadata.on_transaction = observer
    assert setup.gate.requests[requests:] == []
    assert "write" not in transactions
    if metadata.is_sqlite:
        assert transactions == []
    assert setup.stats.upstreams["docker.io"].hits == hits + 3
    await setup.registry.pulls.flush()
    rows = await metadata.read(lambda c: mirror_repositories(c, "docker.io"))
    assert [(r.name, r.hits, r.misses) for r in rows] == [(name, 4, 1)]
