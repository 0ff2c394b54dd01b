"""Passwords, personal access tokens, rate limits and the credential cache."""

from __future__ import annotations

import logging
from pathlib import Path

import httpx
import pytest

from cangku.app import create_app
from cangku.auth import accounts as accounts_module
from cangku.auth.access import AccessControl
from cangku.auth.accounts import AccountError, Accounts
from cangku.auth.ratelimit import LONGEST_WINDOW, FailureLimiter
from cangku.config import Settings
from cangku.metadata.store import MetadataStore
from cangku.registry import Registry
from cangku.storage.filesystem import FilesystemStorage
from tests.api.helpers import error_code, push_blob, push_image
from tests.auth.conftest import As, basic
from tests.databases import same_database


async def test_access_token_works_as_a_password_and_respects_its_scope(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    write = await accounts.create_token("jimo", "ci", "write")
    read = await accounts.create_token("jimo", "dashboards", "read")
    assert write.startswith("ckt_")
    with As(client, basic("jimo", write)):
        await push_image(client, "jimo/app", "v1")
    with As(client, basic("jimo", read)):
        assert (await client.get("/v2/jimo/app/tags/list")).status_code == 200
        assert (await client.post("/v2/jimo/app/blobs/uploads/")).status_code == 403
    listed = {token.name: token for token in await accounts.list_tokens("jimo")}
    assert listed["ci"].last_used_at is not None
    assert listed["dashboards"].scope == "read"


async def test_revoked_token_is_refused(client: httpx.AsyncClient, accounts: Accounts) -> None:
    token = await accounts.create_token("jimo", "ci", "write")
    assert (await client.get("/v2/", headers=basic("jimo", token))).status_code == 200
    await accounts.revoke_token("jimo", "ci")
    assert (await client.get("/v2/", headers=basic("jimo", token))).status_code == 401
    with pytest.raises(AccountError):
        await accounts.revoke_token("jimo", "ci")


async def test_a_token_is_only_good_for_its_owner(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    token = await accounts.create_token("jimo", "ci", "write")
    assert (await client.get("/v2/", headers=basic("lee", token))).status_code == 401
    tampered = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    assert (await client.get("/v2/", headers=basic("jimo", tampered))).status_code == 401


async def test_tokens_are_stored_hashed(accounts: Accounts, registry: object) -> None:
    token = await accounts.create_token("jimo", "ci", "write")
    # The secret's url-safe alphabet includes "_", so split by the token's own pattern.
    match = accounts_module.TOKEN_PATTERN.fullmatch(token)
    assert match is not None
    secret = match.group(2)
    assert len(secret) == 43
    from sqlalchemy import select

    from cangku.metadata.schema import access_tokens

    rows = await accounts.metadata.read(lambda c: c.execute(select(access_tokens)).all())
    assert rows and all(secret not in str(value) for row in rows for value in row)


async def test_failed_logins_are_rate_limited_per_account(client: httpx.AsyncClient) -> None:
    for _ in range(10):
        assert (await client.get("/v2/", headers=basic("jimo", "wrong-guess"))).status_code == 401
    limited = await client.get("/v2/", headers=basic("jimo", "jimo-password"))
    assert limited.status_code == 429
    assert error_code(limited) == "TOOMANYREQUESTS"
    assert int(limited.headers["Retry-After"]) > 0
    token_endpoint = await client.get("/auth/token", headers=basic("jimo"))
    assert token_endpoint.status_code == 429
    # Another account from the same address is not locked out yet.
    assert (await client.get("/v2/", headers=basic("lee"))).status_code == 200


async def test_failure_limiter_window(registry: Registry) -> None:
    limiter = FailureLimiter(registry.metadata, "test", max_failures=3, window=60)
    for moment in (1000, 1001, 1002):
        assert await limiter.retry_after("k", now=moment) is None
        await limiter.record_failure("k", now=moment)
    assert await limiter.retry_after("k", now=1003) == pytest.approx(57)
    assert await limiter.retry_after("other", now=1003) is None
    assert await limiter.retry_after("k", now=1061) is None  # the first failure left the window


async def test_failures_leave_the_database_after_the_longest_window(registry: Registry) -> None:
    from sqlalchemy import func, select

    from cangku.metadata.schema import login_failures

    limiter = FailureLimiter(registry.metadata, "test", max_failures=3, window=60)
    for index in range(50):
        await limiter.record_failure(f"address-{index}", now=0)
    await limiter.record_failure("late", now=LONGEST_WINDOW + 1)
    count = await registry.metadata.read(
        lambda c: c.scalar(select(func.count()).select_from(login_failures))
    )
    assert count == 1
    stored = await registry.metadata.read(lambda c: c.scalars(select(login_failures.c.key)).all())
    assert "late" not in stored[0]  # keys are hashed


async def test_failed_logins_counted_by_one_replica_limit_the_other(
    settings: Settings, registry: Registry, accounts: Accounts
) -> None:
    # Two apps on one database, as two replicas behind a load balancer.
    other = Registry(
        FilesystemStorage(settings.data), MetadataStore.open(same_database(registry.metadata))
    )
    try:
        replicas = [create_app(settings, registry), create_app(settings, other)]
        clients = [
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app, client=("127.0.0.1", 4321)),
                base_url="http://registry.test",
            )
            for app in replicas
        ]
        for attempt in range(10):
            response = await clients[attempt % 2].get("/v2/", headers=basic("jimo", "wrong"))
            assert response.status_code == 401
        for client in clients:
            limited = await client.get("/v2/", headers=basic("jimo"))
            assert limited.status_code == 429
            await client.aclose()
    finally:
        await other.metadata.close()


async def test_verified_password_is_cached_and_a_new_password_ends_it(
    client: httpx.AsyncClient, accounts: Accounts, monkeypatch: pytest.MonkeyPatch
) -> None:
    checks = []
    real = accounts_module.verify_password  # type: ignore[attr-defined]  # patched where used

    def counting(password: str, password_hash: str) -> bool:
        checks.append(password)
        return real(password, password_hash)

    monkeypatch.setattr(accounts_module, "verify_password", counting)
    for _ in range(5):
        assert (await client.get("/v2/", headers=basic("jimo"))).status_code == 200
    assert len(checks) == 1
    await accounts.set_password("jimo", "changed-password")
    assert (await client.get("/v2/", headers=basic("jimo"))).status_code == 401
    assert (await client.get("/v2/", headers=basic("jimo", "changed-password"))).status_code == 200


async def test_no_secret_reaches_the_log(
    client: httpx.AsyncClient, accounts: Accounts, caplog: pytest.LogCaptureFixture
) -> None:
    token = await accounts.create_token("jimo", "ci", "write")
    with caplog.at_level(logging.DEBUG):
        await client.get("/v2/", headers=basic("jimo"))
        await client.get("/v2/", headers=basic("jimo", token))
        await client.get(
            "/auth/token", params={"scope": "repository:jimo/a:pull"}, headers=basic("jimo")
        )
        await client.get("/v2/", headers=basic("jimo", "wrong-password-here"))
    text = caplog.text
    assert "GET /v2/" in text  # the access log did log the requests
    for secret in ("jimo-password", token, "wrong-password-here", "Authorization", "Basic "):
        assert secret not in text


async def test_realm_follows_forwarded_headers_only_from_trusted_proxies(
    access: AccessControl, client: httpx.AsyncClient
) -> None:
    forwarded = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "registry.example.com"}
    response = await client.get("/v2/", headers=forwarded)
    assert 'realm="http://registry.test/auth/token"' in response.headers["WWW-Authenticate"]
    from starlette.requests import Request

    trusted = Request(
        {
            "type": "http",
            "method": "GET",
            "path": "/v2/",
            "scheme": "http",
            "headers": [
                (b"host", b"10.0.0.5:5000"),
                (b"x-forwarded-proto", b"https"),
                (b"x-forwarded-host", b"registry.example.com"),
            ],
            "client": ("10.0.0.1", 5555),
            "server": ("10.0.0.5", 5000),
            "query_string": b"",
        }
    )
    assert access.base_url(trusted) == "https://registry.example.com"


def request_from(peer: str, forwarded_for: str | list[str] | None) -> object:
    from starlette.requests import Request

    headers = [(b"host", b"10.0.0.5:5000")]
    lines = [forwarded_for] if isinstance(forwarded_for, str) else forwarded_for or []
    headers += [(b"x-forwarded-for", line.encode()) for line in lines]
    return Request(
        {
            "type": "http",
            "method": "GET",
            "path": "/v2/",
            "scheme": "http",
            "headers": headers,
            "client": (peer, 5555),
            "server": ("10.0.0.5", 5000),
            "query_string": b"",
        }
    )


@pytest.mark.parametrize(
    ("peer", "forwarded_for", "client"),
    [
        ("10.0.0.1", "203.0.113.7", "203.0.113.7"),  # through the trusted proxy
        ("10.0.0.1", "198.51.100.1, 203.0.113.7", "203.0.113.7"),  # left part: the client's
        ("10.0.0.1", "203.0.113.7, 10.0.0.1", "203.0.113.7"),  # the proxy twice
        ("10.0.0.1", ["6.6.6.6", "203.0.113.7"], "203.0.113.7"),  # the proxy's own line
        ("10.0.0.1", "203.0.113.7:5555", "203.0.113.7"),
        ("10.0.0.1", "[2001:db8::1]:443", "2001:db8::1"),
        ("10.0.0.1", "2001:db8::1", "2001:db8::1"),
        ("10.0.0.1", "not-an-address", "10.0.0.1"),
        ("10.0.0.1", "", "10.0.0.1"),
        ("10.0.0.1", None, "10.0.0.1"),
        ("192.0.2.9", "203.0.113.7", "192.0.2.9"),  # not a trusted proxy: header ignored
    ],
)
def test_rate_limits_see_the_client_behind_trusted_proxies_only(
    access: AccessControl, peer: str, forwarded_for: str | list[str] | None, client: str
) -> None:
    assert access.client_address(request_from(peer, forwarded_for)) == client  # type: ignore[arg-type]


async def test_hostile_host_header_does_not_reach_the_challenge(client: httpx.AsyncClient) -> None:
    response = await client.get("/v2/", headers={"Host": 'evil",error="x'})
    challenge = response.headers["WWW-Authenticate"]
    assert "evil" not in challenge
    assert challenge.count('"') == 4


async def test_initial_admin_with_generated_password(registry: object, tmp_path: Path) -> None:
    accounts = Accounts(registry.metadata)  # type: ignore[attr-defined]
    data = tmp_path / "fresh"
    data.mkdir()
    password = await accounts.ensure_initial_admin(data, None)
    assert password is not None
    secret_file = data / "initial-admin-password"
    assert secret_file.read_text().strip() == password
    assert secret_file.stat().st_mode & 0o777 == 0o600
    assert await accounts.authenticate("admin", password) is not None
    assert (await accounts.principal("admin")).is_admin  # type: ignore[union-attr]
    # Only on an empty account table.
    assert await accounts.ensure_initial_admin(data, None) is None


async def test_initial_admin_with_configured_password(registry: object, tmp_path: Path) -> None:
    accounts = Accounts(registry.metadata)  # type: ignore[attr-defined]
    assert await accounts.ensure_initial_admin(tmp_path, "configured-secret") is None
    assert not (tmp_path / "initial-admin-password").exists()
    assert await accounts.authenticate("admin", "configured-secret") is not None


@pytest.mark.parametrize("name", ["Jimo", "a/b", "", "x" * 65, "-lee", "lee_"])
async def test_account_names_must_be_namespaces(accounts: Accounts, name: str) -> None:
    with pytest.raises(AccountError):
        await accounts.add_user(name, "long-enough-password")


async def test_users_and_organizations_share_names(accounts: Accounts) -> None:
    with pytest.raises(AccountError, match="already a user"):
        await accounts.add_organization("jimo")
    await accounts.add_organization("acme")
    with pytest.raises(AccountError, match="already an organization"):
        await accounts.add_user("acme", "long-enough-password")


@pytest.mark.parametrize("password", ["short", "x" * 73, "bad\npassword"])
async def test_weak_or_unusable_passwords_are_refused(accounts: Accounts, password: str) -> None:
    with pytest.raises(ValueError):
        await accounts.add_user("newuser", password)


async def test_failures_from_a_stranger_do_not_lock_the_owner_out(
    client: httpx.AsyncClient, app_for_address: object
) -> None:
    for _ in range(11):
        await client.get("/v2/", headers=basic("admin", "guessing-wrong"))
    assert (await client.get("/v2/", headers=basic("admin"))).status_code == 429
    async with app_for_address("192.0.2.44") as owner:  # type: ignore[operator]
        assert (await owner.get("/v2/", headers=basic("admin"))).status_code == 200


async def test_a_user_or_organization_with_repositories_cannot_be_deleted(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    with As(client, basic("jimo")):
        await push_image(client, "jimo/app", "v1")
    with pytest.raises(AccountError, match="still owns repositories"):
        await accounts.delete_user("jimo")
    # Otherwise whoever took the name next would own jimo/app.
    digest = (await client.get("/v2/jimo/app/manifests/v1", headers=basic("jimo"))).headers[
        "Docker-Content-Digest"
    ]
    await client.delete(f"/v2/jimo/app/manifests/{digest}", headers=basic("jimo"))
    await accounts.delete_user("jimo")
    assert await accounts.principal("jimo") is None


async def test_a_new_account_with_a_deleted_account_s_name_inherits_nothing(
    client: httpx.AsyncClient, accounts: Accounts, registry: Registry
) -> None:
    """Issue 12 item 10: visibility, blob links, tag policies and quotas go with the account."""
    with As(client, basic("jimo")):
        digest, _ = await push_image(client, "jimo/app", "v1")
        parked = await push_blob(client, "jimo/parked", b"a blob with no image")
        assert (await client.delete(f"/v2/jimo/app/manifests/{digest}")).status_code == 202
    await accounts.set_public("jimo/app", True)
    await accounts.set_public("jimo/parked", True)
    await registry.set_tag_policy("namespace", "jimo", floating=False)
    await registry.set_quota("jimo", 10 * 1024 * 1024)
    with As(client, basic("jimo")):
        session = (await client.post("/v2/jimo/app/blobs/uploads/")).headers["Location"]
        assert (await client.patch(session, content=b"parked bytes")).status_code == 202
    await accounts.delete_user("jimo")

    await accounts.add_user("jimo", "another-person-password")
    with As(client, basic("jimo", "another-person-password")):
        # The old account's open session counts for nobody: a new quota sees none of it.
        await registry.set_quota("jimo", 20)
        fresh = (await client.post("/v2/jimo/new/blobs/uploads/")).headers["Location"]
        assert (await client.patch(fresh, content=b"x" * 20)).status_code == 202
        assert (await client.delete(fresh)).status_code == 204
        await registry.unset_quota("jimo")
        await push_image(client, "jimo/app", "1.0.0")
        # The floating-tag policy was the old account's: the server default applies again.
        assert (await client.get("/v2/jimo/app/manifests/latest")).status_code == 200
        assert (await client.head(f"/v2/jimo/parked/blobs/{parked}")).status_code == 404
    # Not public: the old account's visibility setting went with it.
    assert (await client.get("/v2/jimo/app/manifests/1.0.0")).status_code == 401
    assert (await client.head(f"/v2/jimo/parked/blobs/{parked}")).status_code == 401
    assert await registry.quotas() == []


async def test_deleting_an_account_with_images_asks_for_the_explicit_choice(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    await accounts.add_organization("acme")
    with As(client, basic("jimo")):
        await push_image(client, "jimo/app", "v1")
    with As(client, basic("admin")):
        await push_image(client, "acme/tool", "v1")
    with pytest.raises(AccountError, match="delete them first or delete with them"):
        await accounts.delete_user("jimo")
    await accounts.delete_user("jimo", delete_repositories=True)
    await accounts.delete_organization("acme", delete_repositories=True)
    with As(client, basic("admin")):
        assert (await client.get("/v2/jimo/app/manifests/v1")).status_code == 404
        assert (await client.get("/v2/acme/tool/manifests/v1")).status_code == 404
    await accounts.add_user("jimo", "another-person-password")
    with As(client, basic("jimo", "another-person-password")):
        assert (await client.get("/v2/jimo/app/tags/list")).status_code == 404
