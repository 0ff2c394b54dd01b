"""`/auth/token`: Docker's token-auth spec (GET with Basic or anonymous) and the OAuth2
password and refresh-token grants (POST) that docker and containerd use."""

from __future__ import annotations

import datetime
import re

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from cangku.auth.access import AccessControl, parse_basic
from cangku.auth.errors import Unauthorized
from cangku.auth.permissions import ANONYMOUS, PULL, Principal
from cangku.auth.tokens import Access
from cangku.content.errors import RegistryError
from cangku.content.names import REPOSITORY_NAME
from cangku.http_errors import render_error

# `repository:NAME:pull,push`, optionally with a resource class: `repository(plugin):…`.
SCOPE = re.compile(r"(?P<type>[a-z]+)(?:\([a-z0-9]+\))?:(?P<name>[^:]+):(?P<actions>[a-z*,]+)")
MAX_SCOPES = 32


def token_routes(access: AccessControl) -> list[BaseRoute]:
    async def get_token(request: Request) -> Response:
        try:
            _check_service(access, request.query_params.get("service"))
            principal = ANONYMOUS
            header = request.headers.get("authorization")
            if header:
                kind, _, credentials = header.partition(" ")
                if kind.lower() != "basic":
                    raise Unauthorized("the token endpoint takes Basic credentials")
                name, secret = parse_basic(credentials)
                principal = await access.check_credentials(request, name, secret)
            scopes = request.query_params.getlist("scope")
            offline = request.query_params.get("offline_token") == "true"
            return await _token_response(request, access, principal, scopes, offline, oauth=False)
        except RegistryError as error:
            return _error(error, access)

    async def post_token(request: Request) -> Response:
        try:
            async with request.form(max_files=0, max_fields=50, max_part_size=64 * 1024) as form:
                fields = {key: str(value) for key, value in form.items()}
            _check_service(access, fields.get("service"))
            grant_type = fields.get("grant_type")
            if grant_type == "password":
                principal = await access.check_credentials(
                    request, fields.get("username", ""), fields.get("password", "")
                )
            elif grant_type == "refresh_token":
                principal = await _principal_from_refresh(access, fields.get("refresh_token", ""))
            else:
                raise Unauthorized("grant_type must be password or refresh_token")
            scopes = fields.get("scope", "").split()
            offline = fields.get("access_type") == "offline"
            return await _token_response(request, access, principal, scopes, offline, oauth=True)
        except RegistryError as error:
            return _error(error, access)

    return [
        Route("/auth/token", get_token, methods=["GET"]),
        Route("/auth/token", post_token, methods=["POST"]),
    ]


async def _token_response(
    request: Request,
    access: AccessControl,
    principal: Principal,
    scopes: list[str],
    offline: bool,
    *,
    oauth: bool,
) -> Response:
    grants = await _grants(access, principal, scopes)
    request.scope["user_name"] = principal.name or "-"
    token, lifetime = access.tokens.issue(
        principal.name, grants, principal.token_id, principal.credentials_changed_at
    )
    issued_at = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    body: dict[str, object] = {
        "access_token": token,
        "expires_in": int(lifetime),
        "issued_at": issued_at,
    }
    if oauth:
        body["token_type"] = "Bearer"
        body["scope"] = " ".join(
            f"{grant.type}:{grant.name}:{','.join(sorted(grant.actions))}" for grant in grants
        )
    else:
        body["token"] = token
    if offline and principal.name is not None:
        body["refresh_token"] = access.tokens.issue_refresh(
            principal.name, principal.credentials_changed_at, principal.token_id
        )
    return JSONResponse(body, headers={"Cache-Control": "no-store"})


async def _grants(access: AccessControl, principal: Principal, scopes: list[str]) -> list[Access]:
    """What the caller asked for, cut down to what they may do (possibly nothing)."""
    grants: list[Access] = []
    requested = [part for scope in scopes for part in scope.split()][:MAX_SCOPES]
    for scope in requested:
        match = SCOPE.fullmatch(scope)
        if match is None:
            continue
        wanted = frozenset(match["actions"].split(","))
        if match["type"] == "registry" and match["name"] == "catalog":
            grants.append(Access("registry", "catalog", wanted & {"*"}))
        elif match["type"] == "repository" and REPOSITORY_NAME.fullmatch(match["name"]):
            name = match["name"]
            allowed = principal.actions(name, await access.accounts.open_to(principal, name))
            if PULL in wanted and PULL not in allowed:
                # The pull-through cache: a pull of `name` may be routed to a mirror
                # (`ns`, the default upstream). The token may claim it when one of those
                # may be pulled; each request is still judged on the repository it
                # reaches (AccessControl.may), so the claim never grants more.
                for route in access.accounts.routes(name)[1:]:
                    open_to = await access.accounts.open_to(principal, route)
                    if PULL in principal.actions(route, open_to):
                        allowed = allowed | {PULL}
                        break
            granted = wanted & allowed
            if granted:
                grants.append(Access("repository", name, granted))
    return grants


async def _principal_from_refresh(access: AccessControl, refresh_token: str) -> Principal:
    claims = access.tokens.verify_refresh(refresh_token)
    principal = await access.accounts.principal(str(claims["sub"]), token_id=claims.get("tid"))
    if principal is None or principal.credentials_changed_at != claims.get("cv"):
        raise Unauthorized("the refresh token is no longer valid; log in again")
    return principal


def _check_service(access: AccessControl, service: str | None) -> None:
    if service is not None and service != access.tokens.service:
        raise Unauthorized(
            f"this token service is {access.tokens.service!r}, not {service[:100]!r}"
        )


def _error(error: RegistryError, access: AccessControl) -> Response:
    headers = {}
    if error.status == 401:
        # RFC 9110 §11.6.1: every 401 carries a challenge; here, for Basic credentials.
        headers["WWW-Authenticate"] = f'Basic realm="{access.tokens.service}"'
    return render_error(error, headers=headers)
