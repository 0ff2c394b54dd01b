"""Editing a repository's description and overview in a real browser (issue 17): the
overview's Markdown renders, and an XSS payload in it runs nothing."""

from __future__ import annotations

from typing import Any

import pytest

from tests.e2e.conftest import MANIFEST_ACCEPT, RegistryServer, http_client

from .conftest import ARTIFACTS, Screenshots, basic, push_image_over_http, sign_in

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

XSS_OVERVIEW = """# jimo/web

A small web server. Run it with `docker run -p 8080:8080 jimo/web:1`.

| Tag | What |
|---|---|
| `1` | the newest 1.x release |

<script>document.title = "pwned-script"</script>
<img src=x onerror="document.title = 'pwned-img'">

[a harmless link](https://example.com/docs) and [a bad one](javascript:document.title='pwned-link')
"""


def test_owner_edits_description_and_overview_and_the_payload_runs_nothing(
    ui_server: RegistryServer, page: Any, screenshot: Screenshots
) -> None:
    push_image_over_http(ui_server, "jimo", "jimo/web", "1.0.0", {})
    with http_client(base_url=ui_server.url, headers=basic("jimo")) as client:
        for _ in range(3):
            pulled = client.get("/v2/jimo/web/manifests/1.0.0", headers={"Accept": MANIFEST_ACCEPT})
            assert pulled.status_code == 200
    sign_in(page, ui_server, "jimo")
    page.goto(f"{ui_server.url}/r/jimo/web")
    page.get_by_label("Short description").fill("A small web server <img src=x onerror=alert(1)>")
    page.get_by_label("Overview (Markdown)").fill(XSS_OVERVIEW)
    page.get_by_role("button", name="Save description").click()
    page.wait_for_url(f"{ui_server.url}/r/jimo/web")

    overview = page.locator("#overview")
    assert overview.locator("h1", has_text="jimo/web").count() == 1
    assert overview.locator("table td code", has_text="1").count() == 1
    assert overview.locator("script").count() == 0
    assert overview.locator("img").count() == 0
    good = overview.get_by_role("link", name="a harmless link")
    assert good.get_attribute("href") == "https://example.com/docs"
    assert good.get_attribute("rel") == "nofollow noopener"
    assert overview.locator("a[href^=javascript]").count() == 0
    assert page.locator("#description").inner_text().startswith("A small web server <img")
    # Clicking what looks like the bad link does nothing either.
    overview.get_by_text("a bad one", exact=False).click()
    assert "pwned" not in page.evaluate("document.title")
    assert page.dialogs == []
    assert page.locator("#pulls").inner_text() == "3 pulls"
    screenshot(page, "repository-description")
    # The top of the page, small, for docs/ui.md.
    page.set_viewport_size({"width": 1000, "height": 760})
    page.screenshot(path=str(ARTIFACTS / "repository-overview-top.png"))


def test_reader_sees_the_overview_but_no_form(ui_server: RegistryServer, page: Any) -> None:
    push_image_over_http(ui_server, "lee", "lee/tool", "1.0.0", {})
    assert ui_server.cangku_cli("repo", "set", "lee/tool", "--public").returncode == 0
    described = ui_server.cangku_cli(
        "repo",
        "describe",
        "lee/tool",
        "--description",
        "Lee's tool",
        "--overview-file",
        "-",
        input=b"## Usage\n\nRun **it**.\n",
    )
    assert described.returncode == 0, described.stderr
    sign_in(page, ui_server, "jimo")
    page.goto(f"{ui_server.url}/r/lee/tool")
    assert page.locator("#description").inner_text() == "Lee's tool"
    assert page.locator("#overview strong", has_text="it").count() == 1
    assert page.get_by_role("button", name="Save description").count() == 0


def test_retention_dry_run_page_lists_what_would_go(ui_server: RegistryServer, page: Any) -> None:
    for version in ("1.0.0", "1.0.1", "1.0.2", "1.1.0", "1.1.1", "2.0.0"):
        push_image_over_http(ui_server, "jimo", "jimo/keep", version, {})
    policy = ui_server.cangku_cli(
        "retention",
        "set",
        "--repository",
        "jimo/keep",
        "--keep-patches",
        "1",
        "--keep-tags",
        "2\\..*",
    )
    assert policy.returncode == 0, policy.stderr
    sign_in(page, ui_server, "jimo")
    page.goto(f"{ui_server.url}/r/jimo/keep")
    page.get_by_role("link", name="Retention").click()
    rows = page.locator("#would-delete tbody tr")
    assert sorted(rows.locator("td:first-child").all_inner_texts()) == ["1.0.0", "1.0.1", "1.1.0"]
    assert "not among the newest 1 of the 1.0 line (#3)" in rows.first.inner_text()
    page.set_viewport_size({"width": 1000, "height": 900})
    page.screenshot(path=str(ARTIFACTS / "retention-dry-run.png"))
    assert page.dialogs == []
