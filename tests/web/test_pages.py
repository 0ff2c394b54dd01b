"""The web UI's routes: sign-in, what each person sees, deletes, CSRF, escaping, errors."""

from __future__ import annotations

import base64

import httpx
import pytest
from starlette.requests import Request

from cangku.app import create_app
from cangku.auth.accounts import Accounts
from cangku.config import Settings
from cangku.content.errors import NameUnknown
from cangku.registry import Registry
from cangku.web.site import Site, Viewer

from .conftest import Browser, csrf_of, site_client, store_image


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


async def test_sign_in_with_the_docker_login_password_shows_own_repositories(
    browser: Browser, registry: Registry
) -> None:
    await store_image(registry, "jimo/app", "1.0.0")
    before = await browser.client.get("/")
    assert "jimo/app" not in before.text
    signed_in = await browser.sign_in("jimo")
    assert signed_in.status_code == 303
    page = await browser.client.get("/")
    assert "jimo/app" in page.text
    assert "Sign out jimo" in page.text


async def test_a_copy_of_the_session_cookie_is_worthless_after_signing_out(
    browser: Browser, settings: Settings, registry: Registry
) -> None:
    await store_image(registry, "jimo/app", "1.0.0")
    await browser.sign_in("jimo")
    copied = browser.client.cookies["cangku_session"]
    async for other in site_client(settings, registry):
        other.cookies.set("cangku_session", copied)
        assert "Sign out jimo" in (await other.get("/")).text  # the copy works...

        assert (await browser.post("/signout")).status_code == 303
        page = await other.get("/")  # ...until the session is signed out
        assert "jimo/app" not in page.text and "Sign out jimo" not in page.text
        assert (await other.get("/account")).status_code in (302, 303)
    # Signing in again starts a new session that works...
    await browser.sign_in("jimo")
    assert "Sign out jimo" in (await browser.client.get("/")).text
    # ...and signing in once more, without signing out, ends that one.
    copied = browser.client.cookies["cangku_session"]
    await browser.sign_in("jimo")
    async for other in site_client(settings, registry):
        other.cookies.set("cangku_session", copied)
        assert "Sign out jimo" not in (await other.get("/")).text
    assert "Sign out jimo" in (await browser.client.get("/")).text


async def test_session_cookie_is_httponly_and_samesite_lax(browser: Browser) -> None:
    response = await browser.client.get("/signin")
    cookie = response.headers["set-cookie"].lower()
    assert "httponly" in cookie
    assert "samesite=lax" in cookie
    assert "secure" not in cookie  # plain HTTP here; Secure under TLS


async def test_wrong_password_shows_an_error_and_signs_nobody_in(browser: Browser) -> None:
    response = await browser.sign_in("jimo", "not-the-password")
    assert response.status_code == 401
    assert "Incorrect username or password" in response.text
    assert "Sign out" not in (await browser.client.get("/")).text


async def test_sign_in_never_redirects_off_the_site(browser: Browser) -> None:
    form = await browser.client.get("/signin")
    response = await browser.client.post(
        "/signin",
        data={
            "csrf": csrf_of(form),
            "username": "jimo",
            "password": "jimo-password",
            "next": "//evil.example/",
        },
    )
    assert response.status_code == 303
    assert response.headers["location"] == "/"


async def test_list_shows_own_and_public_repositories_but_not_another_users_private_one(
    browser: Browser, registry: Registry, accounts: Accounts
) -> None:
    await store_image(registry, "jimo/mine", "1")
    await store_image(registry, "lee/secret", "1", actor="lee")
    await store_image(registry, "lee/shared", "1", actor="lee")
    await accounts.set_public("lee/shared", True)
    await browser.sign_in("jimo")
    page = (await browser.client.get("/")).text
    assert "jimo/mine" in page
    assert "lee/shared" in page
    assert "lee/secret" not in page
    searched = (await browser.client.get("/", params={"q": "shar"})).text
    assert "lee/shared" in searched and "jimo/mine" not in searched


async def test_repository_list_sorts_by_last_push_and_pages(
    browser: Browser, registry: Registry
) -> None:
    for index in range(27):
        await store_image(registry, f"jimo/app{index:02d}", "1")
    await browser.sign_in("jimo")
    first = (await browser.client.get("/")).text
    assert "jimo/app00" in first and "jimo/app26" not in first
    assert "Page 1 of 2" in first
    second = (await browser.client.get("/", params={"page": "2"})).text
    assert "jimo/app26" in second
    newest = (await browser.client.get("/", params={"sort": "pushed"})).text
    assert newest.index("jimo/app26") < newest.index("jimo/app25")


async def test_repository_page_shows_tags_versions_pull_command_and_switches(
    browser: Browser, registry: Registry
) -> None:
    digest = await store_image(registry, "jimo/app", "2.0.0")
    await browser.sign_in("jimo")
    page = await browser.client.get("/r/jimo/app")
    assert page.status_code == 200
    text = page.text
    assert "2.0.0" in text and digest[:19] in text
    assert "docker pull registry.test/jimo/app:latest" in text
    assert "linux/amd64" in text
    assert "Floating tags" in text and "Immutable versions" in text
    assert "Delete" in text


async def test_reader_sees_no_switches_and_may_not_post_them(
    browser: Browser, registry: Registry, accounts: Accounts
) -> None:
    await store_image(registry, "lee/shared", "1", actor="lee")
    await accounts.set_public("lee/shared", True)
    await browser.sign_in("jimo")
    page = (await browser.client.get("/r/lee/shared")).text
    assert "Save settings" not in page
    refused = await browser.post("/r/lee/shared/-/settings", {"floating": "on"})
    assert refused.status_code == 403
    assert not (await registry.repository("lee/shared").tags.policy()).immutable_versions


async def test_owner_makes_a_repository_public(
    browser: Browser, registry: Registry, accounts: Accounts
) -> None:
    await store_image(registry, "jimo/app", "1")
    await browser.sign_in("jimo")
    response = await browser.post(
        "/r/jimo/app/-/settings", {"public": "on", "immutable_versions": "on"}
    )
    assert response.status_code == 303
    assert await accounts.is_public("jimo/app")
    policy = await registry.repository("jimo/app").tags.policy()
    assert policy.immutable_versions and not policy.floating


async def test_image_page_shows_config_layers_and_history(
    browser: Browser, registry: Registry
) -> None:
    await store_image(registry, "jimo/app", "1.0.0", labels={"org.example.team": "core"})
    await browser.sign_in("jimo")
    page = await browser.client.get("/r/jimo/app/-/tags/1.0.0")
    assert page.status_code == 200
    for expected in ("org.example.team", "core", "/bin/app --serve", "8080/tcp", "PATH=/usr/bin"):
        assert expected in page.text
    assert "COPY app /bin/app" in page.text
    assert "application/vnd.oci.image.layer.v1.tar+gzip" in page.text


async def test_label_with_a_script_is_shown_as_text(browser: Browser, registry: Registry) -> None:
    await store_image(
        registry,
        "jimo/xss",
        "1",
        labels={"<script>alert(1)</script>": "<script>alert(1)</script>"},
        history=["<img src=x onerror=alert(1)>"],
    )
    await browser.sign_in("jimo")
    page = await browser.client.get("/r/jimo/xss/-/tags/1")
    assert "<script>alert(1)</script>" not in page.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text
    assert "<img src=x" not in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]


async def test_delete_tag_asks_first_then_the_registry_no_longer_serves_it(
    browser: Browser, registry: Registry
) -> None:
    await store_image(registry, "jimo/app", "1.0.0")
    await browser.sign_in("jimo")
    confirmation = await browser.client.get("/r/jimo/app/-/tags/1.0.0/delete")
    assert confirmation.status_code == 200
    assert "jimo/app:1.0.0" in confirmation.text and ">Delete</button>" in confirmation.text
    response = await browser.client.post(
        "/r/jimo/app/-/tags/1.0.0/delete", data={"csrf": csrf_of(confirmation)}
    )
    assert response.status_code == 303
    gone = await browser.client.head(
        "/v2/jimo/app/manifests/1.0.0", headers=basic("jimo", "jimo-password")
    )
    assert gone.status_code == 404


async def test_delete_manifest_removes_all_its_tags(browser: Browser, registry: Registry) -> None:
    digest = await store_image(registry, "jimo/app", "1.0.0")  # also 1.0, 1 and latest
    await browser.sign_in("jimo")
    confirmation = await browser.client.get(f"/r/jimo/app/-/manifests/{digest}/delete")
    assert "Its tag 1.0.0." in confirmation.text and "Its tag latest." in confirmation.text
    response = await browser.post(f"/r/jimo/app/-/manifests/{digest}/delete")
    assert response.status_code == 303
    assert (await registry.repository("jimo/app").tags.list(None, None)).items == []


async def test_delete_repository_removes_every_tag_and_image(
    browser: Browser, registry: Registry
) -> None:
    await store_image(registry, "jimo/app", "1.0.0")
    await store_image(registry, "jimo/app", "2.0.0")
    await browser.sign_in("jimo")
    confirmation = await browser.client.get("/r/jimo/app/-/delete")
    assert "the repository jimo/app" in confirmation.text
    response = await browser.post("/r/jimo/app/-/delete")
    assert response.status_code == 303
    assert (await registry.repository("jimo/app").tags.list(None, None)).items == []
    assert "jimo/app" not in (await browser.client.get("/")).text
    assert (await browser.client.get("/r/jimo/app")).status_code in (200, 404)


@pytest.mark.parametrize("token", [None, "wrong-token"])
async def test_post_without_a_valid_csrf_token_is_refused_and_deletes_nothing(
    browser: Browser, registry: Registry, token: str | None
) -> None:
    await store_image(registry, "jimo/app", "1.0.0")
    await browser.sign_in("jimo")
    data = {} if token is None else {"csrf": token}
    response = await browser.client.post("/r/jimo/app/-/tags/1.0.0/delete", data=data)
    assert response.status_code == 403
    assert "Form expired" in response.text
    assert "1.0.0" in (await registry.repository("jimo/app").tags.list(None, None)).items


@pytest.mark.parametrize(
    "origin", ["http://evil.example", "null", "https://registry.test", "http://registry.test:81"]
)
async def test_form_post_from_another_origin_is_refused_even_with_the_csrf_token(
    browser: Browser, registry: Registry, origin: str
) -> None:
    await store_image(registry, "jimo/app", "1.0.0")
    await browser.sign_in("jimo")
    response = await browser.client.post(
        "/r/jimo/app/-/tags/1.0.0/delete",
        data={"csrf": await browser.csrf()},
        headers={"Origin": origin},
    )
    assert response.status_code == 403
    assert "1.0.0" in (await registry.repository("jimo/app").tags.list(None, None)).items


async def test_form_post_from_our_own_origin_is_accepted(
    browser: Browser, registry: Registry
) -> None:
    await store_image(registry, "jimo/app", "1.0.0")
    await browser.sign_in("jimo")
    response = await browser.client.post(
        "/r/jimo/app/-/tags/1.0.0/delete",
        data={"csrf": await browser.csrf()},
        headers={"Origin": "http://registry.test"},
    )
    assert response.status_code in (200, 303)
    assert "1.0.0" not in (await registry.repository("jimo/app").tags.list(None, None)).items


async def test_csrf_token_of_another_session_is_refused(
    browser: Browser, other_browser: Browser, registry: Registry
) -> None:
    await store_image(registry, "jimo/app", "1.0.0")
    await browser.sign_in("jimo")
    stolen = await other_browser.csrf()
    response = await browser.client.post("/r/jimo/app/-/tags/1.0.0/delete", data={"csrf": stolen})
    assert response.status_code == 403
    assert "1.0.0" in (await registry.repository("jimo/app").tags.list(None, None)).items


async def test_another_users_private_repository_is_hidden_and_its_delete_refused(
    browser: Browser, registry: Registry
) -> None:
    await store_image(registry, "lee/secret", "1", actor="lee")
    await browser.sign_in("jimo")
    page = await browser.client.get("/r/lee/secret")
    assert page.status_code == 404
    assert "secret" not in (await browser.client.get("/")).text
    for path in ("/r/lee/secret/-/tags/1/delete", "/r/lee/secret/-/delete"):
        response = await browser.post(path)
        assert response.status_code == 403, path
    assert (await registry.repository("lee/secret").tags.list(None, None)).items == ["1"]


async def test_anonymous_visitor_of_a_private_repository_is_sent_to_sign_in(
    browser: Browser, registry: Registry
) -> None:
    await store_image(registry, "jimo/app", "1")
    response = await browser.client.get("/r/jimo/app")
    assert response.status_code == 303
    assert response.headers["location"] == "/signin?next=/r/jimo/app"


async def test_unknown_pages_and_images_get_html_404_without_a_trace(
    browser: Browser, registry: Registry
) -> None:
    await store_image(registry, "jimo/app", "1")
    await browser.sign_in("jimo")
    for path in ("/no/such/page", "/r/jimo/app/-/tags/9.9.9", "/r/jimo/app/-/manifests/sha256:00"):
        response = await browser.client.get(path)
        assert response.status_code == 404, path
        assert response.headers["content-type"].startswith("text/html")
        assert "Traceback" not in response.text and "Not found" in response.text


async def test_empty_registry_says_how_to_push_the_first_image(browser: Browser) -> None:
    await browser.sign_in("jimo")
    page = (await browser.client.get("/")).text
    assert "Push your first image" in page
    assert "docker push registry.test/jimo/my-image:1.0.0" in page


async def test_account_creates_a_token_shown_once_and_revokes_it(
    browser: Browser, accounts: Accounts
) -> None:
    await browser.sign_in("jimo")
    created = await browser.post("/account/tokens", {"name": "ci", "scope": "read"})
    assert created.status_code == 200
    assert "ckt_" in created.text
    listed = await browser.client.get("/account")
    assert "ci" in listed.text and "ckt_" not in listed.text
    [token] = await accounts.list_tokens("jimo")
    revoked = await browser.post(f"/account/tokens/{token.id}/revoke")
    assert "The token was revoked" in revoked.text
    assert (await accounts.list_tokens("jimo"))[0].revoked_at is not None


async def test_changing_the_password_keeps_this_session_and_the_new_one_works(
    browser: Browser, accounts: Accounts
) -> None:
    await browser.sign_in("jimo")
    changed = await browser.post(
        "/account/password",
        {
            "current_password": "jimo-password",
            "new_password": "a-new-long-password",
            "repeat_password": "a-new-long-password",
        },
    )
    assert "Your password was changed" in changed.text
    assert "Sign out jimo" in (await browser.client.get("/account")).text
    assert await accounts.authenticate("jimo", "a-new-long-password") is not None


async def test_admin_pages_are_for_administrators_only(browser: Browser) -> None:
    await browser.sign_in("jimo")
    assert (await browser.client.get("/admin")).status_code == 403
    refused = await browser.post("/admin/users", {"name": "mallory", "password": "x" * 20})
    assert refused.status_code == 403


async def test_admin_creates_a_user_and_an_organization_with_a_member(
    browser: Browser, accounts: Accounts
) -> None:
    await browser.sign_in("admin")
    await browser.post("/admin/users", {"name": "mei", "password": "mei-long-password"})
    await browser.post("/admin/organizations", {"name": "team"})
    page = await browser.post(
        "/admin/organizations/team/members", {"user": "mei", "role": "writer"}
    )
    assert "mei is now writer of team" in page.text
    assert (await accounts.list_organizations())["team"] == {"mei": "writer"}
    await browser.post("/admin/users/mei/disable")
    assert [user.disabled for user in await accounts.list_users() if user.name == "mei"] == [True]


async def test_admin_cannot_disable_or_delete_their_own_account(
    browser: Browser, accounts: Accounts
) -> None:
    await browser.sign_in("admin")
    for action in ("disable", "delete"):
        refused = await browser.post(f"/admin/users/admin/{action}")
        assert refused.status_code == 400
        assert "you cannot disable or delete your own account here" in refused.text
    assert {user.name: user.disabled for user in await accounts.list_users()}["admin"] is False


async def test_who_acts_on_the_admin_pages_is_the_signed_in_caller_not_the_log_field(
    browser: Browser, accounts: Accounts, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The access log's `user_name` is a record (a deployment may blank or rewrite it);
    the admin pages' self-protection follows the authenticated viewer."""
    logged_as = {"name": "-"}
    viewer_of = Site.viewer

    async def viewer_with_a_rewritten_log_field(site: Site, request: Request) -> Viewer:
        viewer = await viewer_of(site, request)
        request.scope["user_name"] = logged_as["name"]
        return viewer

    monkeypatch.setattr(Site, "viewer", viewer_with_a_rewritten_log_field)
    await browser.sign_in("admin")
    refused = await browser.post("/admin/users/admin/disable")
    assert refused.status_code == 400
    assert not [user for user in await accounts.list_users() if user.disabled]
    # The other way round: a log field naming the target does not make the admin the target.
    logged_as["name"] = "jimo"
    done = await browser.post("/admin/users/jimo/disable")
    assert done.status_code == 200 and "The user jimo was disabled." in done.text
    assert [user.name for user in await accounts.list_users() if user.disabled] == ["jimo"]


async def test_admin_deletes_a_user_with_images_only_when_asked_to(
    browser: Browser, accounts: Accounts, registry: Registry
) -> None:
    await store_image(registry, "jimo/app", "v1")
    await browser.sign_in("admin")
    refused = await browser.post("/admin/users/jimo/delete")
    assert refused.status_code == 400 and "still owns repositories" in refused.text
    assert 'name="repositories"' in refused.text
    deleted = await browser.post("/admin/users/jimo/delete", {"repositories": "on"})
    assert "The user jimo was deleted." in deleted.text
    assert "jimo" not in [user.name for user in await accounts.list_users()]
    with pytest.raises(NameUnknown):  # The repository itself is gone, not only its images.
        await registry.repository("jimo/app").manifests.get("v1")


async def test_password_change_revokes_access_tokens_only_when_asked(
    browser: Browser, accounts: Accounts
) -> None:
    kept = await accounts.create_token("jimo", "ci", "read")
    await browser.sign_in("jimo")
    form = {"current_password": "jimo-password", "repeat_password": "a-new-long-password"}
    await browser.post("/account/password", {**form, "new_password": "a-new-long-password"})
    # Documented: a token is a credential of its own (a CI job's) and survives.
    assert await accounts.authenticate("jimo", kept) is not None
    changed = await browser.post(
        "/account/password",
        {
            "current_password": "a-new-long-password",
            "new_password": "a-third-long-password",
            "repeat_password": "a-third-long-password",
            "revoke_tokens": "on",
        },
    )
    assert "1 access tokens were revoked" in changed.text
    assert await accounts.authenticate("jimo", kept) is None


async def test_revoke_all_tokens_from_the_account_page(
    browser: Browser, accounts: Accounts
) -> None:
    first = await accounts.create_token("jimo", "ci", "read")
    second = await accounts.create_token("jimo", "laptop", "write")
    others = await accounts.create_token("lee", "ci", "read")
    await browser.sign_in("jimo")
    assert "Revoke all tokens" in (await browser.client.get("/account")).text
    page = await browser.post("/account/tokens/revoke-all")
    assert "2 access tokens were revoked" in page.text
    assert await accounts.authenticate("jimo", first) is None
    assert await accounts.authenticate("jimo", second) is None
    assert await accounts.authenticate("lee", others) is not None


async def test_disabled_account_loses_its_session(browser: Browser, accounts: Accounts) -> None:
    await browser.sign_in("jimo")
    await accounts.set_disabled("jimo", True)
    assert "Sign out" not in (await browser.client.get("/")).text


async def test_forms_on_the_page_after_a_password_change_still_work(browser: Browser) -> None:
    await browser.sign_in("jimo")
    changed = await browser.post(
        "/account/password",
        {
            "current_password": "jimo-password",
            "new_password": "a-new-long-password",
            "repeat_password": "a-new-long-password",
        },
    )
    # Submit a form of the page the change returned, with the token that page carries.
    created = await browser.client.post(
        "/account/tokens", data={"csrf": csrf_of(changed), "name": "ci", "scope": "read"}
    )
    assert created.status_code == 200, created.text


async def test_session_cookie_is_secure_behind_a_trusted_tls_proxy(
    settings: Settings, registry: Registry, accounts: Accounts
) -> None:
    app = create_app(settings, registry)
    # settings trust 10.0.0.1 as a proxy (tests/auth/conftest.py).
    transport = httpx.ASGITransport(app=app, client=("10.0.0.1", 4321))
    async with httpx.AsyncClient(transport=transport, base_url="http://registry.test") as client:
        response = await client.get("/signin", headers={"X-Forwarded-Proto": "https"})
        assert "secure" in response.headers["set-cookie"].lower()
        untrusted = httpx.ASGITransport(app=app, client=("10.9.9.9", 4321))
        async with httpx.AsyncClient(transport=untrusted, base_url="http://registry.test") as other:
            plain = await other.get("/signin", headers={"X-Forwarded-Proto": "https"})
            assert "secure" not in plain.headers["set-cookie"].lower()


async def test_a_session_signed_in_on_one_replica_is_known_and_ended_on_another(
    browser: Browser, settings: Settings, registry: Registry
) -> None:
    # Two apps on one database (and the same data directory's session key), as two replicas.
    from cangku.metadata.store import MetadataStore
    from cangku.storage.filesystem import FilesystemStorage
    from tests.databases import same_database

    other_registry = Registry(
        FilesystemStorage(settings.data), MetadataStore.open(same_database(registry.metadata))
    )
    try:
        await browser.sign_in("jimo")
        cookie = browser.client.cookies["cangku_session"]
        async for other in site_client(settings, other_registry):
            other.cookies.set("cangku_session", cookie)
            assert "Sign out jimo" in (await other.get("/")).text
            assert (await Browser(other).post("/signout")).status_code == 303
        assert "Sign out jimo" not in (await browser.client.get("/")).text
    finally:
        await other_registry.metadata.close()
