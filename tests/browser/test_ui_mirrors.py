"""The pull-through cache in a real browser (issue 13): a manifest pulled through a mirroring
`cangku serve` shows under its upstream on /mirrors with its counts, its repository page has
the "mirror of docker.io" badge, and an admin purges it with the confirmation form."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.conftest import (
    MANIFEST_ACCEPT,
    RegistryServer,
    RegistryServerFactory,
    http_client,
    server_kind,
)

from .conftest import ADMIN_PASSWORD, Screenshots, push_image_over_http

pytestmark = [pytest.mark.e2e, pytest.mark.browser]


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Any]]:
    """(upstream, mirror): an open cangku standing in for docker.io, and a cangku with
    accounts mirroring it as the default upstream."""
    if server_kind() != "cangku":
        pytest.skip("the web UI is cangku's")
    factory = RegistryServerFactory(tmp_path_factory.mktemp("browser-mirrors"))
    try:
        upstream = factory.start()
        upstreams = [{"name": "docker.io", "url": upstream.url, "default": True}]
        mirror = factory.start(
            auth=True,
            extra_env={
                "CANGKU_ADMIN_PASSWORD": ADMIN_PASSWORD,
                "CANGKU_PROXY__UPSTREAMS": json.dumps(upstreams),
            },
        )
        yield upstream, mirror
    finally:
        factory.stop_all()


def _open_upstream_push(upstream: RegistryServer, name: str, tag: str) -> None:
    # The upstream is open: push_image_over_http's credentials are ignored there.
    push_image_over_http(upstream, "jimo", name, tag, {})


def test_a_cached_repository_is_listed_badged_and_purged_by_an_admin(
    servers: tuple[RegistryServer, RegistryServer], page: Any, screenshot: Screenshots
) -> None:
    upstream, mirror = servers
    _open_upstream_push(upstream, "library/alpine", "3")
    with http_client(base_url=mirror.url) as client:
        for path in ("/v2/library/alpine/manifests/3", "/v2/docker.io/library/alpine/manifests/3"):
            pulled = client.get(path, headers={"Accept": MANIFEST_ACCEPT})
            assert pulled.status_code == 200, pulled.text
    time.sleep(11)  # the counts reach the database in the 10 s batches

    page.goto(f"{mirror.url}/signin")
    page.get_by_label("Username").fill("admin")
    page.get_by_label("Password").fill(ADMIN_PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{mirror.url}/")
    page.get_by_role("link", name="Mirrors").click()
    page.wait_for_url(f"{mirror.url}/mirrors")
    row = page.locator("#upstream-docker\\.io tr", has_text="docker.io/library/alpine")
    assert row.locator('td[data-label="Misses"]').inner_text() == "1"
    assert row.locator('td[data-label="Hits"]').inner_text() == "1"
    assert row.locator('td[data-label="Last upstream check"]').inner_text() != "—"
    screenshot(page, "mirrors")

    row.get_by_role("link", name="docker.io/library/alpine").click()
    page.wait_for_url(f"{mirror.url}/r/docker.io/library/alpine")
    assert page.locator("#mirror-badge").inner_text() == "mirror of docker.io"
    assert "1 hits" in page.locator("#mirror-stats").inner_text()
    screenshot(page, "repository")

    page.locator("#purge").click()
    page.get_by_role("button", name="Purge").click()
    page.wait_for_url(f"{mirror.url}/mirrors")
    assert page.locator("#upstream-docker\\.io").get_by_text("Nothing cached").count() == 1
    screenshot(page, "purged")
