"""Issue 13: manifests through the pull-through cache. The upstream is a second cangku app
in-process (httpx's ASGI transport), standing in for docker.io; nothing leaves the process.
The token flow against a challenging upstream is covered in tests/unit/test_proxy_upstream.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from cangku.config import ProxySettings, Settings
from cangku.registry import Registry
from cangku.registry.manifests import Manifests
from tests.api.helpers import OCI_MANIFEST, push_blob, push_image
from tests.api.proxy_upstream import Gate, Mirror, mirror_of_upstream

REVALIDATE = 300.0
Setup = Mirror[Gate]


@pytest.fixture
async def setup(registry: Registry, data_dir: Path, tmp_path: Path) -> AsyncIterator[Setup]:
    proxy = ProxySettings.model_validate(
        {"upstreams": [{"name": "docker.io", "url": "http://up.test", "revalidate": REVALIDATE}]}
    )
    async with mirror_of_upstream(registry, data_dir, tmp_path / "upstream", proxy, Gate) as mirror:
        yield mirror


async def _get(client: httpx.AsyncClient, path: str) -> httpx.Response:
    return await client.get(path, headers={"Accept": OCI_MANIFEST})


def _manifest_requests(gate: Gate) -> list[tuple[str, str]]:
    return [r for r in gate.requests if "/manifests/" in r[1]]


async def test_a_tag_is_fetched_stored_and_revalidated_at_most_once_per_period(
    setup: Setup,
) -> None:
    first, content = await push_image(setup.upstream, "library/alpine", "3")
    answer = await _get(setup.mirror, "/v2/docker.io/library/alpine/manifests/3")
    assert answer.status_code == 200
    assert answer.headers["docker-content-digest"] == first and answer.content == content
    assert _manifest_requests(setup.gate) == [
        ("HEAD", "/v2/library/alpine/manifests/3"),
        ("GET", f"/v2/library/alpine/manifests/{first}"),
    ]
    # Within `revalidate`: from the cache, the upstream not asked.
    setup.clock.now += REVALIDATE - 1
    again = await _get(setup.mirror, "/v2/library/alpine/manifests/3?ns=docker.io")
    assert again.headers["docker-content-digest"] == first
    assert len(_manifest_requests(setup.gate)) == 2

    # The tag moves upstream: seen only after `revalidate`, with one HEAD and one GET.
    moved, _ = await push_image(setup.upstream, "library/alpine", "3")
    stale = await _get(setup.mirror, "/v2/docker.io/library/alpine/manifests/3")
    assert stale.headers["docker-content-digest"] == first
    setup.clock.now += 2
    fresh = await _get(setup.mirror, "/v2/docker.io/library/alpine/manifests/3")
    assert fresh.headers["docker-content-digest"] == moved
    assert _manifest_requests(setup.gate)[2:] == [
        ("HEAD", "/v2/library/alpine/manifests/3"),
        ("GET", f"/v2/library/alpine/manifests/{moved}"),
    ]
    # Unchanged upstream: a HEAD only.
    setup.clock.now += REVALIDATE
    await _get(setup.mirror, "/v2/docker.io/library/alpine/manifests/3")
    assert _manifest_requests(setup.gate)[4:] == [("HEAD", "/v2/library/alpine/manifests/3")]

    # The tag history records the move.
    tags = setup.registry.repository("docker.io/library/alpine").tags
    history = await tags.history("3")
    assert [(c.old_digest, c.new_digest, c.actor) for c in history] == [
        (first, moved, "mirror:docker.io"),
        (None, first, "mirror:docker.io"),
    ]


async def test_by_digest_never_goes_upstream_once_cached(setup: Setup) -> None:
    digest, content = await push_image(setup.upstream, "library/alpine", "3")
    path = f"/v2/docker.io/library/alpine/manifests/{digest}"
    assert (await _get(setup.mirror, path)).content == content
    assert _manifest_requests(setup.gate) == [("GET", f"/v2/library/alpine/manifests/{digest}")]
    setup.clock.now += 10 * REVALIDATE
    setup.gate.down = True
    cached = await _get(setup.mirror, path)
    assert cached.status_code == 200 and cached.content == content
    assert len(_manifest_requests(setup.gate)) == 1


async def test_docker_hub_official_images_are_under_library(setup: Setup) -> None:
    digest, _ = await push_image(setup.upstream, "library/alpine", "3")
    answer = await _get(setup.mirror, "/v2/docker.io/alpine/manifests/3")
    assert answer.headers["docker-content-digest"] == digest


async def test_a_cached_tag_is_served_when_the_upstream_is_down_or_failing(setup: Setup) -> None:
    digest, _ = await push_image(setup.upstream, "library/alpine", "3")
    fresh = await _get(setup.mirror, "/v2/docker.io/library/alpine/manifests/3")
    assert "warning" not in fresh.headers
    for down, status in ((True, None), (False, 429), (False, 503), (False, 500)):
        setup.clock.now += REVALIDATE
        setup.gate.down, setup.gate.status = down, status
        answer = await _get(setup.mirror, "/v2/docker.io/library/alpine/manifests/3")
        assert answer.status_code == 200, (down, status)
        assert answer.headers["docker-content-digest"] == digest
        assert answer.headers["warning"].startswith('299 - "served from the cache: upstream')


async def test_content_never_cached_fails_with_the_upstreams_status_mapped(setup: Setup) -> None:
    setup.gate.status = 429
    throttled = await _get(setup.mirror, "/v2/docker.io/library/alpine/manifests/3")
    assert throttled.status_code == 429 and throttled.headers["retry-after"] == "7"
    assert throttled.json()["errors"][0]["code"] == "TOOMANYREQUESTS"
    setup.gate.status = None
    setup.gate.down = True
    down = await _get(setup.mirror, "/v2/docker.io/library/alpine/manifests/3")
    assert down.status_code == 503 and down.json()["errors"][0]["code"] == "UNAVAILABLE"
    setup.gate.down = False
    missing = await _get(setup.mirror, "/v2/docker.io/library/nothing/manifests/3")
    assert missing.status_code == 404
    assert missing.json()["errors"][0]["code"] == "MANIFEST_UNKNOWN"


async def test_pushing_into_a_mirror_is_denied(setup: Setup) -> None:
    with pytest.raises(AssertionError):
        await push_blob(setup.mirror, "docker.io/library/alpine", b"layer")
    start = await setup.mirror.post("/v2/docker.io/library/alpine/blobs/uploads/")
    assert start.status_code == 403
    error = start.json()["errors"][0]
    assert error["code"] == "DENIED" and "is a mirror" in error["message"]
    put = await setup.mirror.put(
        "/v2/docker.io/library/alpine/manifests/3",
        content=b"{}",
        headers={"Content-Type": OCI_MANIFEST},
    )
    assert put.status_code == 403 and "is a mirror" in put.json()["errors"][0]["message"]
    # Local repositories beside the mirror are pushed as before.
    local, _ = await push_image(setup.mirror, "jimo/app", "1")
    assert (await _get(setup.mirror, "/v2/jimo/app/manifests/1")).status_code == 200
    assert local


async def test_the_server_wraps_mirror_repositories_only(tmp_path: Path) -> None:
    from cangku.app import build_registry
    from cangku.proxy.cache import MirroredManifests, MirrorUploads

    upstreams = [{"name": "docker.io", "url": "http://127.0.0.1:9"}]
    registry = build_registry(Settings(data=tmp_path / "d", proxy={"upstreams": upstreams}))
    try:
        mirror = registry.repository("docker.io/library/alpine")
        assert isinstance(mirror.manifests, MirroredManifests)
        assert isinstance(mirror.uploads, MirrorUploads)
        local = registry.repository("jimo/app")
        assert isinstance(local.manifests, Manifests)
        # The upstream's own name alone is a local repository name, not a mirror.
        assert isinstance(registry.repository("docker.io").manifests, Manifests)
    finally:
        await registry.metadata.close()
