"""/v2 with authentication on: challenges, Basic, Bearer, denials, visibility."""

from __future__ import annotations

import base64
import time

import httpx
import pytest

from cangku.app import build_collector
from cangku.auth.access import AccessControl
from cangku.auth.accounts import Accounts
from cangku.config import Settings
from cangku.registry import Registry
from tests.api.helpers import error_code, push_blob, push_image, sha256
from tests.auth.conftest import As, basic, bearer, token_for
from tests.auth.test_tokens import forged


async def test_anonymous_version_check_gets_a_bearer_challenge(client: httpx.AsyncClient) -> None:
    response = await client.get("/v2/")
    assert response.status_code == 401
    assert error_code(response) == "UNAUTHORIZED"
    assert (
        response.headers["WWW-Authenticate"]
        == 'Bearer realm="http://registry.test/auth/token",service="cangku"'
    )


@pytest.mark.parametrize(
    ("method", "path", "scope"),
    [
        ("GET", "/v2/jimo/app/tags/list", "repository:jimo/app:pull"),
        ("HEAD", "/v2/jimo/app/manifests/v1", "repository:jimo/app:pull"),
        ("POST", "/v2/jimo/app/blobs/uploads/", "repository:jimo/app:pull,push"),
        ("PUT", "/v2/jimo/app/manifests/v1", "repository:jimo/app:pull,push"),
        ("DELETE", "/v2/jimo/app/manifests/v1", "repository:jimo/app:delete"),
    ],
)
async def test_challenge_names_the_scope_the_request_needs(
    client: httpx.AsyncClient, method: str, path: str, scope: str
) -> None:
    response = await client.request(method, path)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].endswith(f',scope="{scope}"')


async def test_basic_credentials_work_directly_on_v2(client: httpx.AsyncClient) -> None:
    assert (await client.get("/v2/", headers=basic("jimo"))).status_code == 200
    with As(client, basic("jimo")):
        digest, _ = await push_image(client, "jimo/app", "v1")
        assert (await client.get("/v2/jimo/app/manifests/v1")).headers[
            "Docker-Content-Digest"
        ] == digest


async def test_wrong_password_is_401_unauthorized(client: httpx.AsyncClient) -> None:
    response = await client.get("/v2/", headers=basic("jimo", "wrong-password"))
    assert response.status_code == 401
    assert error_code(response) == "UNAUTHORIZED"
    response = await client.get("/v2/", headers=basic("nobody", "whatever-password"))
    assert response.status_code == 401


async def test_push_to_another_users_namespace_is_denied(client: httpx.AsyncClient) -> None:
    with As(client, basic("jimo")):
        response = await client.post("/v2/lee/app/blobs/uploads/")
    assert response.status_code == 403
    assert error_code(response) == "DENIED"
    assert response.json()["errors"][0]["message"] == "requested access to the resource is denied"


async def test_token_grants_only_what_the_account_may_do(client: httpx.AsyncClient) -> None:
    token = await token_for(
        client, "jimo", "repository:jimo/app:pull,push", "repository:lee/app:pull,push"
    )
    with As(client, bearer(token)):
        await push_image(client, "jimo/app", "v1")
        assert (await client.post("/v2/lee/app/blobs/uploads/")).status_code == 403


async def test_token_without_a_scope_the_account_has_gets_insufficient_scope(
    client: httpx.AsyncClient,
) -> None:
    token = await token_for(client, "jimo", "repository:jimo/app:pull")
    response = await client.post("/v2/jimo/app/blobs/uploads/", headers=bearer(token))
    assert response.status_code == 401
    challenge = response.headers["WWW-Authenticate"]
    assert 'scope="repository:jimo/app:pull,push"' in challenge
    assert 'error="insufficient_scope"' in challenge


async def test_admin_may_do_everything(client: httpx.AsyncClient) -> None:
    with As(client, basic("admin")):
        await push_image(client, "lee/app", "v1")
        assert (await client.delete("/v2/lee/app/manifests/v1")).status_code == 202


async def test_private_repository_is_refused_to_anonymous_and_others(
    client: httpx.AsyncClient,
) -> None:
    with As(client, basic("jimo")):
        await push_image(client, "jimo/private", "v1")
    assert (await client.get("/v2/jimo/private/manifests/v1")).status_code == 401
    anonymous = await token_for(client, None, "repository:jimo/private:pull")
    assert (
        await client.get("/v2/jimo/private/manifests/v1", headers=bearer(anonymous))
    ).status_code == 403
    assert (
        await client.get("/v2/jimo/private/manifests/v1", headers=basic("lee"))
    ).status_code == 403


async def test_public_repository_may_be_pulled_anonymously_but_not_pushed(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    with As(client, basic("jimo")):
        digest, _ = await push_image(client, "jimo/public", "v1")
    await accounts.set_public("jimo/public", True)
    assert (await client.get("/v2/jimo/public/manifests/v1")).headers[
        "Docker-Content-Digest"
    ] == digest
    anonymous = await token_for(client, None, "repository:jimo/public:pull,push")
    assert (
        await client.get("/v2/jimo/public/manifests/v1", headers=bearer(anonymous))
    ).status_code == 200
    assert (
        await client.post("/v2/jimo/public/blobs/uploads/", headers=bearer(anonymous))
    ).status_code == 403
    assert (
        await client.post("/v2/jimo/public/blobs/uploads/", headers=basic("lee"))
    ).status_code == 403


async def test_catalog_lists_only_what_the_caller_may_see(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    for user, name in (
        ("jimo", "jimo/a"),
        ("jimo", "jimo/b"),
        ("lee", "lee/a"),
        ("lee", "lee/pub"),
    ):
        with As(client, basic(user)):
            await push_image(client, name, "v1", layers=0)
    await accounts.set_public("lee/pub", True)
    listed = lambda r: r.json()["repositories"]  # noqa: E731
    assert listed(await client.get("/v2/_catalog", headers=basic("jimo"))) == [
        "jimo/a",
        "jimo/b",
        "lee/pub",
    ]
    assert listed(await client.get("/v2/_catalog")) == ["lee/pub"]
    assert listed(await client.get("/v2/_catalog", headers=basic("admin"))) == [
        "jimo/a",
        "jimo/b",
        "lee/a",
        "lee/pub",
    ]
    token = await token_for(client, "lee", "registry:catalog:*")
    assert listed(await client.get("/v2/_catalog", headers=bearer(token))) == ["lee/a", "lee/pub"]


async def test_mount_only_from_a_repository_the_caller_may_pull(client: httpx.AsyncClient) -> None:
    with As(client, basic("lee")):
        digest = await push_blob(client, "lee/secret", b"lee's private layer")
    with As(client, basic("jimo")):
        response = await client.post(
            "/v2/jimo/app/blobs/uploads/", params={"mount": digest, "from": "lee/secret"}
        )
        assert response.status_code == 202  # a normal upload session, not a mount
        assert (await client.head(f"/v2/jimo/app/blobs/{digest}")).status_code == 404
        own = await push_blob(client, "jimo/base", b"jimo's layer")
        mounted = await client.post(
            "/v2/jimo/app/blobs/uploads/", params={"mount": own, "from": "jimo/base"}
        )
        assert mounted.status_code == 201


async def test_organization_roles(client: httpx.AsyncClient, accounts: Accounts) -> None:
    await accounts.add_organization("acme")
    await accounts.add_user("wendy", "wendy-password")
    await accounts.add_user("reed", "reed-password")
    await accounts.set_member("acme", "jimo", "owner")
    await accounts.set_member("acme", "wendy", "writer")
    await accounts.set_member("acme", "reed", "reader")
    with As(client, basic("wendy", "wendy-password")):
        await push_image(client, "acme/app", "v1")
        assert (await client.delete("/v2/acme/app/manifests/v1")).status_code == 403
    with As(client, basic("reed", "reed-password")):
        assert (await client.get("/v2/acme/app/tags/list")).status_code == 200
        assert (await client.post("/v2/acme/app/blobs/uploads/")).status_code == 403
    with As(client, basic("jimo")):
        assert (await client.delete("/v2/acme/app/manifests/v1")).status_code == 202
    with As(client, basic("lee")):
        assert (await client.get("/v2/acme/app/tags/list")).status_code == 403


async def test_json_api_follows_the_same_rules(client: httpx.AsyncClient) -> None:
    with As(client, basic("jimo")):
        await push_image(client, "jimo/app", "1.0.0")
    assert (await client.get("/api/v1/repositories/jimo/app/versions")).status_code == 401
    assert (
        await client.get("/api/v1/repositories/jimo/app/versions", headers=basic("lee"))
    ).status_code == 403
    assert (
        await client.get("/api/v1/repositories/jimo/app/versions", headers=basic("jimo"))
    ).status_code == 200


async def test_tag_history_records_who_moved_a_tag(client: httpx.AsyncClient) -> None:
    with As(client, basic("jimo")):
        await push_image(client, "jimo/app", "1.0.0")
        history = (await client.get("/api/v1/repositories/jimo/app/tags/latest/history")).json()[
            "history"
        ]
    assert [(change["actor"], change["reason"]) for change in history] == [
        ("jimo", "follows 1.0.0")
    ]


async def test_disabled_user_cannot_log_in(client: httpx.AsyncClient, accounts: Accounts) -> None:
    assert (await client.get("/v2/", headers=basic("lee"))).status_code == 200
    await accounts.set_disabled("lee", True)
    assert (await client.get("/v2/", headers=basic("lee"))).status_code == 401


async def test_bearer_tokens_end_when_the_account_is_disabled(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    token = await token_for(client, "lee", "repository:lee/app:pull")
    assert (await client.get("/v2/lee/app/tags/list", headers=bearer(token))).status_code == 404
    await accounts.set_disabled("lee", True)
    response = await client.get("/v2/lee/app/tags/list", headers=bearer(token))
    assert response.status_code == 401
    assert error_code(response) == "UNAUTHORIZED"


async def test_bearer_tokens_end_when_the_password_changes(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    token = await token_for(client, "lee", "repository:lee/app:pull")
    assert (await client.get("/v2/lee/app/tags/list", headers=bearer(token))).status_code == 404
    await accounts.set_password("lee", "a-new-password-for-lee")
    response = await client.get("/v2/lee/app/tags/list", headers=bearer(token))
    assert response.status_code == 401
    renewed = await client.get(
        "/auth/token",
        params={"service": "cangku", "scope": "repository:lee/app:pull"},
        headers=basic("lee", "a-new-password-for-lee"),
    )
    fresh = renewed.json()["token"]
    assert (await client.get("/v2/lee/app/tags/list", headers=bearer(fresh))).status_code == 404


async def test_access_log_names_the_user_of_basic_and_bearer_requests(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    token = await token_for(client, "jimo", "repository:jimo/app:pull")
    with caplog.at_level("INFO", logger="cangku.access"):
        await client.get("/v2/jimo/app/tags/list", headers=bearer(token))
        await client.get("/v2/lee/app/tags/list", headers=basic("jimo"))
    lines = [r.getMessage() for r in caplog.records if r.name == "cangku.access"]
    assert any("/v2/jimo/app/tags/list" in line and "user=jimo" in line for line in lines)
    assert any("/v2/lee/app/tags/list 403" in line and "user=jimo" in line for line in lines)


async def test_usage_api_is_for_admins_and_repository_usage_for_pullers(
    client: httpx.AsyncClient,
) -> None:
    with As(client, basic("jimo")):
        await push_image(client, "jimo/app", "v1")
    assert (await client.get("/api/v1/usage")).status_code == 401
    assert (await client.get("/api/v1/usage", headers=basic("jimo"))).status_code == 403
    assert (await client.get("/api/v1/quotas", headers=basic("jimo"))).status_code == 403
    assert (await client.get("/api/v1/usage", headers=basic("admin"))).status_code == 200
    own = await client.get("/api/v1/repositories/jimo/app/usage", headers=basic("jimo"))
    assert own.status_code == 200
    other = await client.get("/api/v1/repositories/jimo/app/usage", headers=basic("lee"))
    assert other.status_code == 403


async def test_event_deliveries_api_is_for_admins(client: httpx.AsyncClient) -> None:
    # Issue 16: the endpoints are the server's configuration.
    endpoints, redeliver = "/api/v1/events/endpoints", "/api/v1/events/deliveries/1/redeliver"
    assert (await client.get(endpoints)).status_code == 401
    assert (await client.get(endpoints, headers=basic("jimo"))).status_code == 403
    assert (await client.post(redeliver, headers=basic("jimo"))).status_code == 403
    assert (await client.get(endpoints, headers=basic("admin"))).json() == {"endpoints": []}
    assert (await client.post(redeliver, headers=basic("admin"))).status_code == 404


async def test_visibility_json_api_is_for_owners(client: httpx.AsyncClient) -> None:
    with As(client, basic("jimo")):
        await push_image(client, "jimo/app", "v1")
    url = "/api/v1/repositories/jimo/app/visibility"
    assert (await client.get(url, headers=basic("jimo"))).json() == {
        "repository": "jimo/app",
        "public": False,
    }
    assert (await client.put(url, json={"public": True}, headers=basic("lee"))).status_code == 403
    assert (await client.put(url, json={"public": True})).status_code == 401
    changed = await client.put(url, json={"public": True}, headers=basic("jimo"))
    assert changed.json() == {"repository": "jimo/app", "public": True}
    # Now anyone may pull it, also anonymously.
    assert (await client.get("/v2/jimo/app/manifests/v1")).status_code == 200
    for body in (b"not json", b'{"public": "yes"}', b"[true]", b"{" * 10_000):
        refused = await client.put(url, content=body, headers=basic("jimo"))
        assert refused.status_code in (400, 413) and refused.json()["error"]["code"] in (
            "REQUEST_INVALID",
            "SIZE_INVALID",
        )


async def test_a_repository_named_like_its_namespace_is_listed_for_its_owner(
    client: httpx.AsyncClient,
) -> None:
    with As(client, basic("jimo")):
        await push_image(client, "jimo", "v1", layers=0)
        await push_image(client, "jimo/app", "v1", layers=0)
    listed = (await client.get("/v2/_catalog", headers=basic("jimo"))).json()["repositories"]
    assert listed == ["jimo", "jimo/app"]
    assert (await client.get("/v2/_catalog", headers=basic("lee"))).json()["repositories"] == []


async def test_head_version_check_is_challenged_like_get(client: httpx.AsyncClient) -> None:
    response = await client.head("/v2/")
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith('Bearer realm="http://registry.test/')
    assert (await client.head("/v2/", headers=basic("jimo"))).status_code == 200


@pytest.mark.parametrize("path", ["/v2/", "/v2/jimo/app/tags/list", "/api/v1/usage"])
@pytest.mark.parametrize(
    ("authorization", "error"),
    [
        ("Bearer not-a-token", ',error="invalid_token"'),
        ("Bearer eyJhbGciOiJFUzI1NiJ9.e30.c2ln", ',error="invalid_token"'),
        ("Basic " + base64.b64encode(b"jimo:wrong-password").decode(), ""),
        ("Basic !!!", ""),
        ("Negotiate abc", ""),
    ],
)
async def test_every_401_carries_a_challenge(
    client: httpx.AsyncClient, path: str, authorization: str, error: str
) -> None:
    response = await client.get(path, headers={"Authorization": authorization})
    assert response.status_code == 401
    challenge = response.headers["WWW-Authenticate"]
    assert challenge.startswith('Bearer realm="http://registry.test/auth/token",service="cangku"')
    assert challenge.endswith(error) if error else "error=" not in challenge


async def test_expired_token_gets_a_challenge(
    client: httpx.AsyncClient, access: AccessControl
) -> None:
    now = int(time.time())
    token = forged(access.tokens, exp=now - 60, iat=now - 400)
    response = await client.get("/v2/jimo/app/tags/list", headers=bearer(token))
    assert response.status_code == 401
    assert response.json()["errors"][0]["message"] == "token expired"
    assert response.headers["WWW-Authenticate"].endswith(
        ',scope="repository:jimo/app:pull",error="invalid_token"'
    )


async def test_token_endpoint_401_carries_a_basic_challenge(client: httpx.AsyncClient) -> None:
    response = await client.get("/auth/token", headers=basic("jimo", "wrong-password"))
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == 'Basic realm="cangku"'


async def test_mount_challenge_also_asks_for_pull_on_the_source(
    client: httpx.AsyncClient,
) -> None:
    with As(client, basic("jimo")):
        digest = await push_blob(client, "jimo/base", b"jimo's layer")
    params = {"mount": digest, "from": "jimo/base"}
    response = await client.post("/v2/jimo/app/blobs/uploads/", params=params)
    assert response.status_code == 401
    scope = "repository:jimo/app:pull,push repository:jimo/base:pull"
    assert response.headers["WWW-Authenticate"].endswith(f',scope="{scope}"')
    # A client following the challenge gets a token that mounts.
    token = await token_for(client, "jimo", scope)
    mounted = await client.post("/v2/jimo/app/blobs/uploads/", params=params, headers=bearer(token))
    assert mounted.status_code == 201


async def test_token_without_pull_on_the_mount_source_is_sent_for_a_wider_one(
    client: httpx.AsyncClient,
) -> None:
    with As(client, basic("jimo")):
        digest = await push_blob(client, "jimo/base", b"jimo's layer")
    with As(client, basic("lee")):
        secret = await push_blob(client, "lee/secret", b"lee's private layer")
    token = await token_for(client, "jimo", "repository:jimo/app:pull,push")
    response = await client.post(
        "/v2/jimo/app/blobs/uploads/",
        params={"mount": digest, "from": "jimo/base"},
        headers=bearer(token),
    )
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].endswith(
        ',scope="repository:jimo/app:pull,push repository:jimo/base:pull"'
        ',error="insufficient_scope"'
    )
    # A source the account may not pull is no reason for a challenge: a normal upload.
    refused = await client.post(
        "/v2/jimo/app/blobs/uploads/",
        params={"mount": secret, "from": "lee/secret"},
        headers=bearer(token),
    )
    assert refused.status_code == 202
    assert "was not mounted" in refused.headers["Warning"]


async def test_automatic_mount_only_from_repositories_the_caller_may_pull(
    client: httpx.AsyncClient, registry: Registry
) -> None:
    registry.automatic_mount = True
    with As(client, basic("lee")):
        secret = await push_blob(client, "lee/secret", b"lee's private layer")
    with As(client, basic("jimo")):
        own = await push_blob(client, "jimo/base", b"jimo's layer")
        refused = await client.post("/v2/jimo/app/blobs/uploads/", params={"mount": secret})
        assert refused.status_code == 202
        assert (await client.head(f"/v2/jimo/app/blobs/{secret}")).status_code == 404
        mounted = await client.post("/v2/jimo/app/blobs/uploads/", params={"mount": own})
        assert mounted.status_code == 201


async def test_a_removed_member_s_token_stops_working_at_once(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    await accounts.add_organization("acme")
    await accounts.set_member("acme", "lee", "writer")
    token = await token_for(client, "lee", "repository:acme/app:pull,push")
    with As(client, bearer(token)):
        await push_image(client, "acme/app", "v1")
    await accounts.set_member("acme", "lee", None)
    with As(client, bearer(token)):
        assert (await client.get("/v2/acme/app/manifests/v1")).status_code == 403
        refused = await client.post("/v2/acme/app/blobs/uploads/")
        assert refused.status_code == 403
        assert error_code(refused) == "DENIED"


async def test_a_demoted_member_s_token_keeps_only_the_new_role(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    await accounts.add_organization("acme")
    await accounts.set_member("acme", "lee", "writer")
    token = await token_for(client, "lee", "repository:acme/app:pull,push")
    with As(client, bearer(token)):
        await push_image(client, "acme/app", "v1")
    await accounts.set_member("acme", "lee", "reader")
    with As(client, bearer(token)):
        assert (await client.get("/v2/acme/app/manifests/v1")).status_code == 200
        assert (await client.post("/v2/acme/app/blobs/uploads/")).status_code == 403


async def test_an_anonymous_token_stops_pulling_a_repository_made_private(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    with As(client, basic("jimo")):
        await push_image(client, "jimo/app", "v1")
    await accounts.set_public("jimo/app", True)
    token = await token_for(client, None, "repository:jimo/app:pull")
    assert (await client.get("/v2/jimo/app/manifests/v1", headers=bearer(token))).status_code == 200
    await accounts.set_public("jimo/app", False)
    refused = await client.get("/v2/jimo/app/manifests/v1", headers=bearer(token))
    assert refused.status_code in (401, 403)
    assert error_code(refused) in ("UNAUTHORIZED", "DENIED")


async def test_a_user_s_token_stops_pulling_another_s_repository_made_private(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    with As(client, basic("jimo")):
        await push_image(client, "jimo/app", "v1")
    await accounts.set_public("jimo/app", True)
    token = await token_for(client, "lee", "repository:jimo/app:pull")
    assert (await client.get("/v2/jimo/app/manifests/v1", headers=bearer(token))).status_code == 200
    await accounts.set_public("jimo/app", False)
    assert (await client.get("/v2/jimo/app/manifests/v1", headers=bearer(token))).status_code == 403


async def test_a_disabled_user_s_token_stops_pushing_at_once(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    token = await token_for(client, "lee", "repository:lee/app:pull,push")
    with As(client, bearer(token)):
        await push_image(client, "lee/app", "v1")
    await accounts.set_disabled("lee", True)
    with As(client, bearer(token)):
        refused = await client.post("/v2/lee/app/blobs/uploads/")
    assert refused.status_code == 401


async def test_an_admin_s_bearer_token_may_read_the_registry_usage(
    client: httpx.AsyncClient,
) -> None:
    token = await token_for(client, "admin")
    assert (await client.get("/api/v1/usage", headers=bearer(token))).status_code == 200
    assert (await client.get("/api/v1/quotas", headers=bearer(token))).status_code == 200
    token = await token_for(client, "jimo")
    assert (await client.get("/api/v1/usage", headers=bearer(token))).status_code == 403


@pytest.mark.parametrize("path", ["/v2/", "/", "/auth/token", "/api/v1/usage"])
async def test_responses_over_tls_carry_hsts_and_over_plain_http_do_not(
    client: httpx.AsyncClient, path: str
) -> None:
    secure = await client.get(f"https://registry.test{path}")
    assert secure.headers["Strict-Transport-Security"] == "max-age=31536000"
    plain = await client.get(f"http://registry.test{path}")
    assert "Strict-Transport-Security" not in plain.headers


async def test_the_upload_sessions_a_user_keeps_open_are_bounded(
    client: httpx.AsyncClient, registry: Registry
) -> None:
    registry.max_open_uploads = 3
    with As(client, basic("jimo")):
        opened = [
            (await client.post(f"/v2/jimo/app{n}/blobs/uploads/")).headers["Location"]
            for n in range(3)
        ]
        refused = await client.post("/v2/jimo/app/blobs/uploads/")
        assert refused.status_code == 429
        assert error_code(refused) == "TOOMANYREQUESTS"
        # Finishing or cancelling one frees its place.
        assert (await client.delete(opened[0])).status_code == 204
        data = b"a small layer"
        assert (
            await client.put(opened[1], params={"digest": sha256(data)}, content=data)
        ).status_code == 201
        assert (await client.post("/v2/jimo/app/blobs/uploads/")).status_code == 202
        assert (await client.post("/v2/jimo/app/blobs/uploads/")).status_code == 202
        assert (await client.post("/v2/jimo/app/blobs/uploads/")).status_code == 429
        # Monolithic pushes open no session.
        await push_blob(client, "jimo/app", b"one-shot layer")
    with As(client, basic("lee")):  # Another user has places of their own.
        assert (await client.post("/v2/lee/app/blobs/uploads/")).status_code == 202


async def test_expired_upload_sessions_give_their_places_back(
    client: httpx.AsyncClient, registry: Registry, settings: Settings
) -> None:
    registry.max_open_uploads = 1
    with As(client, basic("jimo")):
        assert (await client.post("/v2/jimo/app/blobs/uploads/")).status_code == 202
        assert (await client.post("/v2/jimo/app/blobs/uploads/")).status_code == 429
        await build_collector(settings, registry).collect(now=time.time() + 2 * 86400)
        assert (await client.post("/v2/jimo/app/blobs/uploads/")).status_code == 202
