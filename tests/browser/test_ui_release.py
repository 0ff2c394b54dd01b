"""Releasing a client-managed floating tag from the repository page, in a real browser."""

from __future__ import annotations

from typing import Any

import pytest

from tests.e2e.conftest import MANIFEST_ACCEPT, RegistryServer, http_client

from .conftest import Screenshots, basic, push_image_over_http, sign_in

pytestmark = [pytest.mark.e2e, pytest.mark.browser]


def test_client_managed_latest_is_marked_and_release_makes_it_follow_the_newest_release(
    ui_server: RegistryServer, page: Any, screenshot: Screenshots
) -> None:
    name = "jimo/release"
    first = push_image_over_http(ui_server, "jimo", name, "1.0.0", {"v": "1"})
    second = push_image_over_http(ui_server, "jimo", name, "2.0.0", {"v": "2"})
    with http_client(base_url=ui_server.url, headers=basic("jimo")) as client:
        old = client.get(f"/v2/{name}/manifests/1.0.0", headers={"Accept": MANIFEST_ACCEPT})
        assert old.status_code == 200, old.text
        pushed = client.put(
            f"/v2/{name}/manifests/latest",
            content=old.content,
            headers={"Content-Type": old.headers["Content-Type"]},
        )
        assert pushed.status_code == 201, pushed.text
        assert "client-managed" in pushed.headers.get("Warning", "")

    sign_in(page, ui_server, "jimo")
    page.goto(f"{ui_server.url}/r/{name}")
    latest = page.locator(".tree .latest")
    mark = latest.locator('[data-managed="latest"]')
    assert mark.inner_text() == "client-managed"
    # A client-managed tag follows no release: the tree names its image (1.0.0's).
    assert f"→ {first[:19]}" in latest.inner_text()
    screenshot(page, "latest-client-managed")

    latest.get_by_role("button", name="Release").click()
    page.wait_for_url(f"{ui_server.url}/r/{name}")
    latest = page.locator(".tree .latest")
    assert "→ 2.0.0" in latest.inner_text()
    assert page.locator("[data-managed]").count() == 0
    assert page.get_by_role("button", name="Release").count() == 0
    screenshot(page, "latest-released")

    with http_client(base_url=ui_server.url, headers=basic("jimo")) as client:
        now = client.head(f"/v2/{name}/manifests/latest", headers={"Accept": MANIFEST_ACCEPT})
        assert now.headers["Docker-Content-Digest"] == second != first
    assert page.dialogs == []
