"""Issue 13: the pull-through cache in the UI: /mirrors lists cached repositories under
their upstream with hits, misses and the last upstream check; a mirror's repository page
has a "mirror of docker.io" badge; admins purge (confirmation, then a CSRF-checked POST)."""

# ruff: noqa: F811  (pytest fixtures take the names of the fixtures they use)
from __future__ import annotations

import re
from pathlib import Path

import pytest

from cangku.config import Settings
from cangku.proxy.stats import CacheStats
from cangku.registry import Registry
from tests.auth.conftest import (  # noqa: F401  (fixtures)
    PASSWORDS,
    accounts,
    database_url,
    fast_bcrypt,
    registry,
)
from tests.web.conftest import Browser, browser, csrf_of, other_browser, store_image  # noqa: F401


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        data=tmp_path / "data",
        proxy={
            "upstreams": [
                {"name": "docker.io", "url": "https://registry-1.docker.io", "default": True},
                {"name": "ghcr.io", "url": "https://ghcr.io", "public": False},
            ]
        },
    )


@pytest.fixture
async def cached(registry: Registry) -> None:
    await store_image(registry, "docker.io/library/alpine", "3", actor="mirror:docker.io")
    await store_image(registry, "ghcr.io/team/tool", "1", actor="mirror:ghcr.io")
    await store_image(registry, "jimo/app", "1")
    stats = CacheStats(registry.pulls)
    stats.count("docker.io", "docker.io/library/alpine", "checked", "new", 0)
    stats.count("docker.io", "docker.io/library/alpine", "miss", "", 100)
    for _ in range(3):
        stats.count("docker.io", "docker.io/library/alpine", "hit", "", 0)
    await registry.pulls.flush()


def _row(page: str, name: str) -> str:
    match = re.search(
        rf"<tr>\s*<td data-label=\"Repository\"><a [^>]*>{re.escape(name)}</a>.*?</tr>", page, re.S
    )
    assert match is not None, f"no row for {name}"
    return match.group(0)


@pytest.mark.usefixtures("cached")
async def test_mirrors_lists_cached_repositories_under_their_upstream_with_counts(
    browser: Browser,
) -> None:
    page = await browser.client.get("/mirrors")
    assert page.status_code == 200
    assert 'href="/mirrors"' in page.text  # the nav links to it
    docker = page.text.split('id="upstream-docker.io"')[1].split("</section>")[0]
    row = _row(docker, "docker.io/library/alpine")
    assert '<td data-label="Hits">3</td>' in row and '<td data-label="Misses">1</td>' in row
    assert '<td data-label="Last upstream check">—</td>' not in row
    assert "jimo/app" not in page.text  # local repositories are not mirrors
    # ghcr.io is for signed-in users: hidden from anonymous visitors, and no purge for them.
    assert "ghcr.io/team/tool" not in page.text and "Purge" not in page.text
    await browser.sign_in("lee")
    signed_in = await browser.client.get("/mirrors")
    assert "ghcr.io/team/tool" in signed_in.text and "Purge" not in signed_in.text


@pytest.mark.usefixtures("cached")
async def test_a_mirrors_page_has_its_badge_and_counts_and_a_local_one_not(
    browser: Browser,
) -> None:
    mirror = await browser.client.get("/r/docker.io/library/alpine")
    assert mirror.status_code == 200
    assert 'id="mirror-badge"' in mirror.text and "mirror of docker.io" in mirror.text
    stats = mirror.text.split('id="mirror-stats"')[1].split("</p>")[0]
    assert "library/alpine" in stats and "3 hits" in stats and "1 misses" in stats
    assert 'id="purge"' not in mirror.text
    await browser.sign_in("jimo")
    local = await browser.client.get("/r/jimo/app")
    assert local.status_code == 200 and "mirror-badge" not in local.text
    assert 'href="/mirrors"' in local.text


@pytest.mark.usefixtures("cached")
async def test_an_admin_purges_a_repository_and_an_upstream_after_confirming(
    browser: Browser, registry: Registry
) -> None:
    await browser.sign_in("admin")
    page = await browser.client.get("/r/docker.io/library/alpine")
    assert 'id="purge"' in page.text
    confirm = await browser.client.get("/mirrors/purge?target=docker.io/library/alpine")
    assert (
        confirm.status_code == 200 and "Purge the cache of docker.io/library/alpine" in confirm.text
    )
    assert 'name="target" value="docker.io/library/alpine"' in confirm.text
    done = await browser.client.post(
        "/mirrors/purge", data={"csrf": csrf_of(confirm), "target": "docker.io/library/alpine"}
    )
    assert done.status_code == 303 and done.headers["location"] == "/mirrors"
    assert (await registry.repository("docker.io/library/alpine").tags.list(10, None)).items == []
    # A whole upstream; local repositories stay.
    assert (await browser.post("/mirrors/purge", {"target": "ghcr.io"})).status_code == 303
    assert (await registry.repository("ghcr.io/team/tool").tags.list(10, None)).items == []
    assert (await registry.repository("jimo/app").tags.list(10, None)).items == ["1"]


@pytest.mark.usefixtures("cached")
async def test_purge_needs_an_admin_a_csrf_token_and_a_mirror(
    browser: Browser, other_browser: Browser, registry: Registry
) -> None:
    await browser.sign_in("jimo")
    refused = await browser.post("/mirrors/purge", {"target": "docker.io/library/alpine"})
    assert refused.status_code == 403
    assert (await browser.client.get("/mirrors/purge?target=docker.io")).status_code == 403
    await other_browser.sign_in("admin")
    forged = await other_browser.client.post(
        "/mirrors/purge", data={"csrf": "forged", "target": "docker.io/library/alpine"}
    )
    assert forged.status_code == 403
    for target in ("jimo/app", "jimo", "../x", ""):
        answer = await other_browser.post("/mirrors/purge", {"target": target})
        assert answer.status_code == 404, target
    tags = await registry.repository("docker.io/library/alpine").tags.list(10, None)
    assert tags.items == ["3"]
    assert (await registry.repository("jimo/app").tags.list(10, None)).items == ["1"]
