"""Bearer tokens: issuing per Docker's token-auth spec, and every way a token is refused."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Mapping

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from cangku.auth.access import AccessControl
from cangku.auth.accounts import Accounts
from cangku.auth.errors import Unauthorized
from cangku.auth.tokens import ALGORITHM, ISSUER, Access, TokenService, key_id
from tests.api.helpers import error_code
from tests.auth.conftest import basic, bearer, token_for


def forged(service: TokenService, **overrides: object) -> str:
    """A token like ours, with some claims or header fields changed."""
    now = int(time.time())
    claims: dict[str, object] = {
        "iss": ISSUER,
        "sub": "jimo",
        "aud": service.service,
        "exp": now + 300,
        "nbf": now - 1,
        "iat": now,
        "access": [{"type": "repository", "name": "jimo/app", "actions": ["pull"]}],
    }
    key = overrides.pop("key", service.key)
    headers = {"kid": overrides.pop("kid", service.kid)}
    claims.update(overrides)
    return jwt.encode(claims, key, algorithm=ALGORITHM, headers=headers)  # type: ignore[arg-type]


def unsigned(service: TokenService) -> str:
    def part(value: Mapping[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")

    now = int(time.time())
    header = {"alg": "none", "typ": "JWT", "kid": service.kid}
    claims = {"iss": ISSUER, "sub": "jimo", "aud": service.service, "exp": now + 300, "iat": now}
    return f"{part(header)}.{part(claims)}."


def test_our_token_verifies(access: AccessControl) -> None:
    token = forged(access.tokens)
    verified = access.tokens.verify(token)
    assert verified.subject == "jimo"
    assert verified.allows("repository", "jimo/app", "pull")
    assert not verified.allows("repository", "jimo/app", "push")


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda s: forged(s, exp=int(time.time()) - 60, iat=int(time.time()) - 400), "expired"),
        (lambda s: forged(s, key=ec.generate_private_key(ec.SECP256R1())), "Signature"),
        (lambda s: forged(s, aud="someone-else"), "audience"),
        (lambda s: forged(s, iss="evil"), "issuer"),
        (lambda s: forged(s, kid="unknown-key"), "unknown key id"),
        (unsigned, "algorithm"),
        (lambda s: "not.a.token", "invalid token"),
        (lambda s: forged(s, nbf=int(time.time()) + 600), "not yet valid"),
    ],
    ids=[
        "expired",
        "bad-signature",
        "wrong-audience",
        "wrong-issuer",
        "unknown-kid",
        "alg-none",
        "garbage",
        "not-yet-valid",
    ],
)
async def test_refused_tokens_are_401_unauthorized(
    access: AccessControl, client: httpx.AsyncClient, make: object, reason: str
) -> None:
    token = make(access.tokens)  # type: ignore[operator]
    with pytest.raises(Unauthorized, match=reason):
        access.tokens.verify(token)
    response = await client.get("/v2/jimo/app/tags/list", headers=bearer(token))
    assert response.status_code == 401
    assert error_code(response) == "UNAUTHORIZED"


def test_a_token_of_another_key_with_our_kid_is_refused(access: AccessControl) -> None:
    other = TokenService(ec.generate_private_key(ec.SECP256R1()), service="cangku")
    assert other.kid != access.tokens.kid
    token = forged(access.tokens, key=other.key)
    with pytest.raises(Unauthorized):
        access.tokens.verify(token)


def test_key_id_is_stable_for_a_key(access: AccessControl) -> None:
    assert key_id(access.tokens.key) == access.tokens.kid


async def test_get_token_answers_the_docker_token_spec_shape(
    client: httpx.AsyncClient, access: AccessControl
) -> None:
    response = await client.get(
        "/auth/token",
        params={
            "service": "cangku",
            "scope": "repository:jimo/app:pull,push",
            "offline_token": "true",
        },
        headers=basic("jimo"),
    )
    assert response.status_code == 200
    body = response.json()
    assert body["token"] == body["access_token"]
    assert body["expires_in"] == 300
    assert body["issued_at"].endswith("+00:00")
    assert "refresh_token" in body
    claims = jwt.decode(body["token"], options={"verify_signature": False})
    assert claims["access"] == [
        {"type": "repository", "name": "jimo/app", "actions": ["pull", "push"]}
    ]
    assert (claims["iss"], claims["aud"], claims["sub"]) == ("cangku", "cangku", "jimo")
    assert claims["exp"] - claims["iat"] == 300
    assert jwt.get_unverified_header(body["token"])["kid"] == access.tokens.kid


async def test_token_holds_less_than_asked_when_less_is_granted(client: httpx.AsyncClient) -> None:
    token = await token_for(
        client, "jimo", "repository:lee/app:pull,push", "repository:jimo/x:delete"
    )
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["access"] == [{"type": "repository", "name": "jimo/x", "actions": ["delete"]}]


async def test_token_with_wrong_password_is_401(client: httpx.AsyncClient) -> None:
    response = await client.get(
        "/auth/token", params={"service": "cangku"}, headers=basic("jimo", "nope-nope")
    )
    assert response.status_code == 401
    assert response.json()["errors"][0]["message"] == "incorrect username or password"


async def test_token_for_another_service_is_refused(client: httpx.AsyncClient) -> None:
    response = await client.get("/auth/token", params={"service": "evil"}, headers=basic("jimo"))
    assert response.status_code == 401


async def test_oauth_password_and_refresh_token_grants(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    response = await client.post(
        "/auth/token",
        data={
            "grant_type": "password",
            "username": "jimo",
            "password": "jimo-password",
            "service": "cangku",
            "scope": "repository:jimo/app:pull repository:lee/app:push",
            "client_id": "containerd",
            "access_type": "offline",
        },
    )
    assert response.status_code == 200
    body = response.json()
    assert body["token_type"] == "Bearer"
    assert body["scope"] == "repository:jimo/app:pull"
    refresh = body["refresh_token"]
    again = await client.post(
        "/auth/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": refresh,
            "service": "cangku",
            "scope": "repository:jimo/app:push",
        },
    )
    assert again.status_code == 200
    assert again.json()["scope"] == "repository:jimo/app:push"
    # A changed password ends every refresh token issued before.
    await accounts.set_password("jimo", "a-new-password")
    refused = await client.post(
        "/auth/token",
        data={"grant_type": "refresh_token", "refresh_token": refresh, "service": "cangku"},
    )
    assert refused.status_code == 401
    wrong = await client.post(
        "/auth/token",
        data={"grant_type": "password", "username": "jimo", "password": "jimo-password"},
    )
    assert wrong.status_code == 401


async def test_an_access_token_is_not_a_refresh_token(client: httpx.AsyncClient) -> None:
    access_token = await token_for(client, "jimo", "repository:jimo/app:pull")
    response = await client.post(
        "/auth/token", data={"grant_type": "refresh_token", "refresh_token": access_token}
    )
    assert response.status_code == 401


async def test_anonymous_token_grants_only_public_pulls(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    await accounts.set_public("lee/pub", True)
    token = await token_for(
        client, None, "repository:lee/pub:pull,push", "repository:lee/private:pull"
    )
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["sub"] == ""
    assert claims["access"] == [{"type": "repository", "name": "lee/pub", "actions": ["pull"]}]


def test_access_claim_round_trip() -> None:
    grant = Access("repository", "a/b", frozenset({"push", "pull"}))
    assert grant.to_claim() == {"type": "repository", "name": "a/b", "actions": ["pull", "push"]}


async def test_token_from_a_read_only_access_token_is_denied_push_not_rechallenged(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    read = await accounts.create_token("jimo", "dashboards", "read")
    response = await client.get(
        "/auth/token",
        params={"service": "cangku", "scope": "repository:jimo/x:pull,push"},
        headers=basic("jimo", read),
    )
    token = response.json()["token"]
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["access"] == [{"type": "repository", "name": "jimo/x", "actions": ["pull"]}]
    pushed = await client.post("/v2/jimo/x/blobs/uploads/", headers=bearer(token))
    assert pushed.status_code == 403
    assert error_code(pushed) == "DENIED"
    await accounts.revoke_token("jimo", "dashboards")
    # Revoked: the bearer token issued for it ends at once, for what it did allow too.
    for method, path in (("POST", "/v2/jimo/x/blobs/uploads/"), ("GET", "/v2/jimo/x/tags/list")):
        refused = await client.request(method, path, headers=bearer(token))
        assert (refused.status_code, error_code(refused)) == (401, "UNAUTHORIZED")
