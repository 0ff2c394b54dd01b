"""Authentication and authorization of requests.

Every /v2 route names the action it needs (pull, push, delete, or the catalog). A request
carries Basic credentials (password or access token), a Bearer token from /auth/token, or
nothing (anonymous). Anonymous callers may pull public repositories; everything else is a
401 with a Bearer challenge naming the scope the request needs, so docker fetches a token
and retries. An authenticated caller without the right gets 403 DENIED.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import logging
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from starlette.requests import Request

from cangku.auth.accounts import Accounts
from cangku.auth.errors import Challenge, Unauthorized
from cangku.auth.permissions import ANONYMOUS, PULL, PUSH, Principal
from cangku.auth.ratelimit import FailureLimiter
from cangku.auth.tokens import AccessToken, TokenService
from cangku.content.errors import Denied, TooManyRequests
from cangku.registry.records import Visibility

log = logging.getLogger("cangku")

CATALOG = "catalog"
# A verified password is remembered this long (keyed by an HMAC, never the password itself);
# each use still re-reads the account, so a changed password or a disabled user ends it.
CREDENTIAL_CACHE_SECONDS = 60.0
CREDENTIAL_CACHE_SIZE = 1024
SAFE_HOST = re.compile(r"[A-Za-z0-9.\-]+(?::\d{1,5})?|\[[0-9A-Fa-f:.]+\](?::\d{1,5})?")


class RateLimited(TooManyRequests):
    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = max(1, int(retry_after + 0.999))


@dataclass(frozen=True, slots=True)
class Caller:
    """Who made a request, and what they may do."""

    principal: Principal
    token: AccessToken | None = None

    @property
    def name(self) -> str | None:
        return self.principal.name


class AccessControl:
    def __init__(
        self,
        accounts: Accounts,
        tokens: TokenService,
        *,
        trusted_proxies: list[str] | None = None,
    ) -> None:
        self.accounts = accounts
        self.tokens = tokens
        self.trusted_proxies = [
            ipaddress.ip_network(p, strict=False) for p in trusted_proxies or []
        ]
        self._warned_of_untrusted_proxy = False
        # In the database: every replica counts the same failures (auth/ratelimit.py).
        self.account_failures = FailureLimiter(accounts.metadata, "account", 10, 300)
        self.address_failures = FailureLimiter(accounts.metadata, "address", 50, 300)
        self._cache_key = secrets.token_bytes(32)
        self._credentials: OrderedDict[bytes, tuple[float, float]] = OrderedDict()

    # -- per request -----------------------------------------------------------------------
    async def authorize(
        self,
        request: Request,
        repository: str | None,
        action: str | None,
        *,
        wanted: Sequence[tuple[str, str]] = (),
        requested: str | None = None,
    ) -> Caller:
        """The caller, if they may do `action` on `repository`; raise Challenge/Denied if not.

        `wanted` are (repository, action) pairs the request can use but does not need, such as
        pull on a mount's `from` repository: every challenge names them too, and a bearer
        token that lacks one the account has gets an insufficient_scope challenge, so that a
        client following challenges gets a token that can mount.

        `requested`: the name the client used when the pull-through cache routed the read
        to `repository` (`library/alpine?ns=docker.io` reaches `docker.io/library/alpine`):
        challenges name it (clients ask for tokens for the name they use) and a token for
        it serves; the rights are judged on `repository`, the one read.
        """
        scope = (
            _scope(requested or repository, action, wanted)
            if repository and action and action != CATALOG
            else None
        )
        try:
            caller = await self.authenticate(request)
        except Challenge:
            raise
        except Unauthorized as error:
            # RFC 9110 §11.6.1: every 401 carries a challenge; RFC 6750 §3.1 names the error.
            bearer = request.headers.get("authorization", "")[:7].lower() == "bearer "
            raise self.challenge(
                request, scope, error.message, error="invalid_token" if bearer else None
            ) from None
        request.scope["user_name"] = caller.name or "-"  # the access log's, also on refusal
        if action is None or action == CATALOG:
            # The version check and the catalog: any authenticated caller, and the catalog
            # also anonymously (it lists only what the caller may see).
            if action is None and caller.principal.is_anonymous and caller.token is None:
                raise self.challenge(request, None, "authentication required")
            return caller
        assert repository is not None
        if await self.may(caller, repository, action, requested=requested):
            for other, other_action in wanted:
                if not await self.may(caller, other, other_action) and await self._account_may(
                    caller, other, other_action
                ):
                    raise self.challenge(
                        request, scope, "insufficient scope", error="insufficient_scope"
                    )
            return caller
        if caller.principal.is_anonymous and caller.token is None:
            raise self.challenge(request, scope, "authentication required")
        if await self._account_may(caller, repository, action):
            # The token lacks the scope; the account itself has it: send the client for a
            # wider token instead of refusing.
            raise self.challenge(request, scope, "insufficient scope", error="insufficient_scope")
        raise Denied("requested access to the resource is denied", {"repository": repository})

    async def _account_may(self, caller: Caller, repository: str, action: str) -> bool:
        """Whether the account behind a bearer token may do `action` (False without a token).

        `authenticate` loaded the account as it is now, so this is its current right."""
        if caller.token is None or caller.principal.name is None:
            return False
        open_to = await self.accounts.open_to(caller.principal, repository)
        return action in caller.principal.actions(repository, open_to)

    async def may(
        self, caller: Caller, repository: str, action: str, *, requested: str | None = None
    ) -> bool:
        """Whether the caller may do `action` on `repository` now.

        A bearer token grants at most its `access` claim, and never more than its account
        (or, for an anonymous token, anyone) may do at the time of the request: a member
        removed from an organization, a repository made private or a disabled account
        takes effect on the next request, not when the token expires (issue 12, item 9).
        The membership and visibility reads go through the metadata read cache.

        A read the pull-through cache routed (`requested`: the client's name) is allowed by
        a token for either name: tokens are asked for the name a client uses."""
        if caller.token is not None and not (
            caller.token.allows("repository", repository, action)
            or (requested is not None and caller.token.allows("repository", requested, action))
        ):
            return False
        public = (
            await self.accounts.open_to(caller.principal, repository) if action == PULL else False
        )
        return action in caller.principal.actions(repository, public)

    async def visibility(self, caller: Caller) -> Visibility | None:
        """What the caller may list in the catalog (None: everything)."""
        # For a bearer token too: the account as it is now (authenticate() loaded it).
        principal = caller.principal
        if principal.is_admin:
            return None
        return Visibility(
            namespaces=frozenset(
                namespace for namespace, actions in principal.namespaces.items() if PULL in actions
            )
            if PULL in principal.limit
            else frozenset(),
            public_by_default=self.accounts.public_by_default,
            mirrors=self.accounts.visible_mirrors(principal),
            hidden_mirrors=self.accounts.hidden_mirrors(principal),
        )

    async def authenticate(self, request: Request) -> Caller:
        header = request.headers.get("authorization")
        if not header:
            return Caller(ANONYMOUS)
        kind, _, credentials = header.partition(" ")
        kind = kind.lower()
        if kind == "bearer":
            token = self.tokens.verify(credentials.strip())
            if token.subject is None:
                return Caller(ANONYMOUS, token)
            # A disabled or deleted account, a revoked access token or a changed password
            # ends its bearer tokens now, not when they expire; and the caller's rights are
            # the account's as they are now (its memberships, admin flag), within the token.
            current = await self.accounts.principal(token.subject, token_id=token.token_id)
            if current is None or token.credentials_version != current.credentials_changed_at:
                raise Unauthorized("the token's account or credentials changed; log in again")
            return Caller(current, token)
        if kind == "basic":
            name, secret = parse_basic(credentials)
            principal = await self.check_credentials(request, name, secret)
            return Caller(principal)
        raise Unauthorized("unsupported Authorization scheme")

    async def check_credentials(self, request: Request, name: str, secret: str) -> Principal:
        """A password or access token, rate-limited per account and client address."""
        address = self.client_address(request)
        # Per account *and* address: a stranger's failures must not lock the owner out.
        account_key = f"{name}\0{address}"
        for limiter, key in (
            (self.account_failures, account_key),
            (self.address_failures, address),
        ):
            wait = await limiter.retry_after(key)
            if wait is not None:
                raise RateLimited("too many failed logins; try again later", wait)
        cache_key = hmac.digest(self._cache_key, f"{name}\0{secret}".encode(), hashlib.sha256)
        cached = self._credentials.get(cache_key)
        if cached is not None and time.monotonic() - cached[0] < CREDENTIAL_CACHE_SECONDS:
            principal = await self.accounts.principal(name)
            if principal is not None and principal.credentials_changed_at == cached[1]:
                return principal
        self._credentials.pop(cache_key, None)
        principal = await self.accounts.authenticate(name, secret)
        if principal is None:
            await self.account_failures.record_failure(account_key)
            await self.address_failures.record_failure(address)
            raise Unauthorized("incorrect username or password")
        if principal.token_id is None:
            self._credentials[cache_key] = (time.monotonic(), principal.credentials_changed_at)
            if len(self._credentials) > CREDENTIAL_CACHE_SIZE:
                self._credentials.popitem(last=False)
        return principal

    # -- the client's view of us -----------------------------------------------------------
    def client_address(self, request: Request) -> str:
        """The peer, or behind trusted proxies the nearest address they forwarded for."""
        peer = request.client.host if request.client else "unknown"
        if not self._from_trusted_proxy(request):
            return peer
        # Every X-Forwarded-For line counts: a proxy may add its own instead of appending.
        hops = ",".join(request.headers.getlist("x-forwarded-for")).split(",")
        client = peer
        # Right to left: each trusted proxy appended the address it received from.
        for hop in reversed(hops):
            address = _forwarded_address(hop)
            if address is None:
                break  # A garbled entry: trust nothing left of it.
            client = str(address)
            if not self._trusted(address):
                break
        return client

    def base_url(self, request: Request) -> str:
        """scheme://host as the client used it (X-Forwarded-* only from trusted proxies)."""
        scheme = request.url.scheme
        host = request.headers.get("host", "")
        if self._from_trusted_proxy(request):
            scheme = request.headers.get("x-forwarded-proto", scheme).split(",")[0].strip()
            host = request.headers.get("x-forwarded-host", host).split(",")[0].strip()
        elif "x-forwarded-proto" in request.headers and not self._warned_of_untrusted_proxy:
            self._warned_of_untrusted_proxy = True  # Once: every request would say the same.
            log.warning(
                "ignoring X-Forwarded-* from %s, which is not in auth.trusted_proxies; if it "
                "is your reverse proxy, list it there so that token realms and secure cookies "
                "follow the scheme and host the clients use",
                self.client_address(request),
            )
        if scheme not in ("http", "https"):
            scheme = request.url.scheme
        if not SAFE_HOST.fullmatch(host):
            server = request.scope.get("server") or ("localhost", None)
            host = f"{server[0]}:{server[1]}" if server[1] else str(server[0])
        return f"{scheme}://{host}"

    def challenge(
        self, request: Request, scope: str | None, message: str, *, error: str | None = None
    ) -> Challenge:
        """A 401 with a Bearer challenge (RFC 6750 §3); `scope` may hold several scopes
        separated by spaces, as Distribution's token auth sends them."""
        header = (
            f'Bearer realm="{self.base_url(request)}/auth/token",service="{self.tokens.service}"'
        )
        if scope:
            header += f',scope="{scope}"'
        if error:
            header += f',error="{error}"'
        return Challenge(message, header)

    def _from_trusted_proxy(self, request: Request) -> bool:
        if not self.trusted_proxies or request.client is None:
            return False
        try:
            address = ipaddress.ip_address(request.client.host)
        except ValueError:
            return False
        return self._trusted(address)

    def _trusted(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        return any(address in network for network in self.trusted_proxies)


def _forwarded_address(hop: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """An X-Forwarded-For entry: `1.2.3.4`, `1.2.3.4:5555`, `2001:db8::1`, `[2001:db8::1]:80`."""
    hop = hop.strip()
    if hop.startswith("["):
        hop = hop[1 : hop.find("]")] if "]" in hop else ""
    elif hop.count(":") == 1:
        hop = hop.partition(":")[0]
    try:
        return ipaddress.ip_address(hop)
    except ValueError:
        return None


def parse_basic(credentials: str) -> tuple[str, str]:
    try:
        decoded = base64.b64decode(credentials.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise Unauthorized("malformed Basic credentials") from None
    name, separator, secret = decoded.partition(":")
    if not separator or not name:
        raise Unauthorized("malformed Basic credentials")
    return name, secret


def _scope(repository: str, action: str, wanted: Sequence[tuple[str, str]] = ()) -> str:
    """`repository:NAME:ACTIONS`, then one more per wanted pair, separated by spaces."""
    scopes = []
    for name, act in [(repository, action), *wanted]:
        actions = "pull,push" if act == PUSH else act
        scopes.append(f"repository:{name}:{actions}")
    return " ".join(scopes)
