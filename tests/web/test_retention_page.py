"""The retention page (issue 17): the dry run in the UI, and owners setting the policy."""

from __future__ import annotations

import base64

from cangku.auth.accounts import Accounts
from cangku.registry import Registry
from cangku.registry.retention import RetentionPolicy, plan_retention, set_retention_policy

from .conftest import Browser, store_image

VERSIONS = ["1.0.0", "1.0.1", "1.0.2", "1.1.0", "1.1.1"]


async def push(registry: Registry, name: str, actor: str = "jimo") -> None:
    for version in VERSIONS:
        await store_image(registry, name, version, actor=actor)


async def test_dry_run_lists_what_would_go_and_why_and_deletes_nothing(
    browser: Browser, registry: Registry
) -> None:
    await push(registry, "jimo/app")
    await set_retention_policy(
        registry.metadata, "namespace", "jimo", RetentionPolicy(keep_patches=1)
    )
    await browser.sign_in("jimo")
    page = await browser.client.get("/r/jimo/app/-/retention")
    assert page.status_code == 200
    would_delete = page.text.split('id="would-delete"', 1)[1].split("</table>", 1)[0]
    for tag in ("1.0.0", "1.0.1", "1.1.0"):
        assert f">{tag}</a>" in would_delete
    assert "1.0.2" not in would_delete and "1.1.1" not in would_delete
    assert "not among the newest 1 of the 1.0 line (#3)" in would_delete
    assert "The <strong>namespace</strong> policy applies" in page.text
    assert len((await registry.repository("jimo/app").tags.list(None, None)).items) == 9


async def test_owner_sets_the_repository_policy_with_the_form(
    browser: Browser, registry: Registry
) -> None:
    await push(registry, "jimo/app")
    await browser.sign_in("jimo")
    saved = await browser.post(
        "/r/jimo/app/-/retention",
        {"keep_tags": "1\\.0\\..*\n", "keep_patches": "1", "keep_pulled_within": "30d"},
    )
    assert saved.status_code == 303
    plan = await plan_retention(registry.metadata, "jimo/app")
    assert plan.scope == "repository"
    assert plan.policy == RetentionPolicy(
        keep_tags=(r"1\.0\..*",), keep_patches=1, keep_pulled_within=30 * 86400.0
    )
    page = (await browser.client.get("/r/jimo/app/-/retention")).text
    assert 'value="4w2d"' in page  # the stored duration comes back into the form
    refused = await browser.post("/r/jimo/app/-/retention", {"keep_patches": "many"})
    assert refused.status_code == 400
    removed = await browser.post("/r/jimo/app/-/retention", {"remove": "on"})
    assert removed.status_code == 303
    assert (await plan_retention(registry.metadata, "jimo/app")).scope is None


async def test_reader_sees_the_dry_run_but_may_not_change_the_policy(
    browser: Browser, registry: Registry, accounts: Accounts
) -> None:
    await push(registry, "lee/tool", actor="lee")
    await accounts.set_public("lee/tool", True)
    await browser.sign_in("jimo")
    page = (await browser.client.get("/r/lee/tool/-/retention")).text
    assert "Save policy" not in page
    refused = await browser.post("/r/lee/tool/-/retention", {"keep_patches": "1"})
    assert refused.status_code == 403
    assert (await plan_retention(registry.metadata, "lee/tool")).scope is None


async def test_retention_api_dry_run_and_owner_only_put(
    browser: Browser, registry: Registry, accounts: Accounts
) -> None:
    await push(registry, "lee/tool", actor="lee")
    await accounts.set_public("lee/tool", True)

    def basic(user: str) -> dict[str, str]:
        token = base64.b64encode(f"{user}:{user}-password".encode()).decode()
        return {"Authorization": f"Basic {token}"}

    url = "/api/v1/repositories/lee/tool/retention"
    client = browser.client
    assert (
        await client.put(url, json={"keep_patches": 1}, headers=basic("jimo"))
    ).status_code == 403
    bad = await client.put(url, json={"keep_patches": 0}, headers=basic("lee"))
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "REQUEST_INVALID"
    put = await client.put(url, json={"keep_patches": 1}, headers=basic("lee"))
    assert put.status_code == 200, put.text
    assert sorted(d["tag"] for d in put.json()["delete"]) == ["1.0.0", "1.0.1", "1.1.0"]
    got = (await client.get(url)).json()
    assert got["policy_scope"] == "repository" and len(got["delete"]) == 3
    assert (await client.put(url, content=b"null", headers=basic("lee"))).json()["delete"] == []
