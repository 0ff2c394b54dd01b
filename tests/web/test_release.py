"""The repository page's mark and Release button for client-managed floating tags."""

from __future__ import annotations

import pytest

from cangku.auth.accounts import Accounts
from cangku.registry import Registry
from cangku.registry.context import RequestContext

from .conftest import Browser, store_image

MARK = 'data-managed="latest"'
RELEASE_FORM = 'action="/r/{name}/-/tags/latest/release"'


async def latest_pushed_over_the_policy(registry: Registry, name: str, owner: str) -> str:
    """1.0.0 and 2.0.0, then `latest` pushed at 1.0.0's image: client-managed. Returns
    2.0.0's digest (what `latest` follows once released)."""
    first = await store_image(registry, name, "1.0.0", actor=owner)
    second = await store_image(registry, name, "2.0.0", actor=owner)
    manifests = registry.repository(name).manifests
    old = await manifests.get(first)
    await manifests.put("latest", old.content, old.media_type, RequestContext(caller=owner))
    assert (await manifests.get("latest")).digest == first
    return second


async def test_client_managed_tag_is_marked_and_release_makes_it_follow_again(
    browser: Browser, registry: Registry
) -> None:
    newest = await latest_pushed_over_the_policy(registry, "jimo/app", "jimo")
    await browser.sign_in("jimo")
    page = (await browser.client.get("/r/jimo/app")).text
    assert MARK in page and ">client-managed</span>" in page
    assert RELEASE_FORM.format(name="jimo/app") in page
    # The policy-managed floating tags (1, 1.0, 2, 2.0) carry no mark.
    assert page.count("data-managed=") == 1

    response = await browser.post("/r/jimo/app/-/tags/latest/release")
    assert response.status_code == 303
    assert response.headers["location"] == "/r/jimo/app"
    assert (await registry.repository("jimo/app").manifests.get("latest")).digest == newest
    after = (await browser.client.get("/r/jimo/app")).text
    assert "data-managed=" not in after and "/release" not in after


async def test_reader_sees_the_mark_but_no_release_button_and_may_not_post_it(
    browser: Browser, registry: Registry, accounts: Accounts
) -> None:
    await latest_pushed_over_the_policy(registry, "lee/shared", "lee")
    await accounts.set_public("lee/shared", True)
    manifests = registry.repository("lee/shared").manifests
    before = (await manifests.get("latest")).digest
    await browser.sign_in("jimo")
    page = (await browser.client.get("/r/lee/shared")).text
    assert MARK in page
    assert "/release" not in page
    refused = await browser.post("/r/lee/shared/-/tags/latest/release")
    assert refused.status_code == 403
    assert (await manifests.get("latest")).digest == before


@pytest.mark.parametrize("token", [None, "", "not-the-token"])
async def test_release_without_a_valid_csrf_token_is_refused(
    browser: Browser, registry: Registry, token: str | None
) -> None:
    await latest_pushed_over_the_policy(registry, "jimo/app", "jimo")
    manifests = registry.repository("jimo/app").manifests
    before = (await manifests.get("latest")).digest
    await browser.sign_in("jimo")
    data = {} if token is None else {"csrf": token}
    response = await browser.client.post("/r/jimo/app/-/tags/latest/release", data=data)
    assert response.status_code == 403 and "Form expired" in response.text
    assert (await manifests.get("latest")).digest == before


async def test_release_from_another_origin_is_refused(browser: Browser, registry: Registry) -> None:
    await latest_pushed_over_the_policy(registry, "jimo/app", "jimo")
    manifests = registry.repository("jimo/app").manifests
    before = (await manifests.get("latest")).digest
    await browser.sign_in("jimo")
    response = await browser.client.post(
        "/r/jimo/app/-/tags/latest/release",
        data={"csrf": await browser.csrf()},
        headers={"Origin": "http://evil.example"},
    )
    assert response.status_code == 403
    assert (await manifests.get("latest")).digest == before


async def test_release_of_a_version_tag_or_a_missing_tag_is_an_error_page(
    browser: Browser, registry: Registry
) -> None:
    await latest_pushed_over_the_policy(registry, "jimo/app", "jimo")
    await browser.sign_in("jimo")
    version = await browser.post("/r/jimo/app/-/tags/1.0.0/release")
    assert version.status_code == 400 and "text/html" in version.headers["content-type"]
    missing = await browser.post("/r/jimo/app/-/tags/3/release")
    assert missing.status_code == 404
    hostile = await browser.post("/r/jimo/app/-/tags/-bad/release")
    assert hostile.status_code == 404
