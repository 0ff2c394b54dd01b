"""Bearer tokens per Docker's token-auth spec: short-lived ES256 JWTs with `access` claims.

The signing key is generated into the data directory on first start (or configured), and
its key id travels in every token's header; a token naming another key is refused.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from cangku.auth.errors import Unauthorized
from cangku.keyfiles import read_or_create

ALGORITHM = "ES256"
ISSUER = "cangku"
REFRESH_AUDIENCE_SUFFIX = ":refresh"
REFRESH_LIFETIME = 30 * 24 * 3600.0
VERIFIED_CACHE_SIZE = 4096


@dataclass(frozen=True, slots=True)
class Access:
    """One `access` claim entry: a resource and the actions granted on it."""

    type: str
    name: str
    actions: frozenset[str]

    def to_claim(self) -> dict[str, Any]:
        return {"type": self.type, "name": self.name, "actions": sorted(self.actions)}


@dataclass(frozen=True, slots=True)
class AccessToken:
    subject: str | None
    access: tuple[Access, ...]
    expires_at: float
    # The personal access token it was issued for, whose scope limits any wider token.
    token_id: str | None = None
    # The account's credentials_changed_at when it was issued (None: anonymous, or no claim).
    credentials_version: float | None = None

    def allows(self, resource_type: str, name: str, action: str) -> bool:
        return any(
            grant.type == resource_type and grant.name == name and action in grant.actions
            for grant in self.access
        )


def load_or_create_signing_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """The P-256 key in `path`, created (mode 0600) when missing."""

    def new_key() -> bytes:
        return ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    pem = read_or_create(path, new_key)
    loaded = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(loaded, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{path} must hold an EC P-256 private key")
    return loaded


def key_id(key: ec.EllipticCurvePrivateKey) -> str:
    public = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.urlsafe_b64encode(hashlib.sha256(public).digest()[:20]).decode().rstrip("=")


class TokenService:
    def __init__(
        self, key: ec.EllipticCurvePrivateKey, *, service: str, lifetime: float = 300.0
    ) -> None:
        self.key = key
        self.public_key = key.public_key()
        self.kid = key_id(key)
        self.service = service
        self.lifetime = lifetime
        # Verified tokens by their text: verifying an ES256 signature costs more than a GET.
        self._verified: OrderedDict[str, AccessToken] = OrderedDict()

    def issue(
        self,
        subject: str | None,
        access: list[Access],
        token_id: str | None = None,
        credentials_changed_at: float | None = None,
    ) -> tuple[str, float]:
        """A signed access token and its lifetime in seconds.

        `credentials_changed_at` (claim `cv`) ties it to the account's credentials as they
        are now: a later password change ends it (auth/access.py)."""
        now = time.time()
        claims: dict[str, Any] = {
            "iss": ISSUER,
            "sub": subject or "",
            "aud": self.service,
            "exp": int(now + self.lifetime),
            "nbf": int(now) - 1,
            "iat": int(now),
            "jti": secrets.token_urlsafe(16),
            "access": [grant.to_claim() for grant in access],
        }
        if token_id is not None:
            claims["tid"] = token_id
        if credentials_changed_at is not None:
            claims["cv"] = credentials_changed_at
        token = jwt.encode(claims, self.key, algorithm=ALGORITHM, headers={"kid": self.kid})
        return token, self.lifetime

    def issue_refresh(
        self, subject: str, credentials_changed_at: float, token_id: str | None
    ) -> str:
        now = time.time()
        claims = {
            "iss": ISSUER,
            "sub": subject,
            "aud": self.service + REFRESH_AUDIENCE_SUFFIX,
            "exp": int(now + REFRESH_LIFETIME),
            "iat": int(now),
            "jti": secrets.token_urlsafe(16),
            "cv": credentials_changed_at,
            "tid": token_id,
        }
        return jwt.encode(claims, self.key, algorithm=ALGORITHM, headers={"kid": self.kid})

    def verify(self, token: str) -> AccessToken:
        """Check signature, key id, issuer, audience and time; raise Unauthorized otherwise."""
        cached = self._verified.get(token)
        if cached is not None:
            if cached.expires_at > time.time():
                return cached
            del self._verified[token]
        claims = self._decode(token, self.service)
        try:
            access = tuple(
                Access(str(item["type"]), str(item["name"]), frozenset(map(str, item["actions"])))
                for item in claims.get("access") or []
            )
        except (KeyError, TypeError) as error:
            raise Unauthorized(f"invalid token: malformed access claim ({error})") from None
        token_id = claims.get("tid")
        verified = AccessToken(
            claims.get("sub") or None,
            access,
            float(claims["exp"]),
            token_id if isinstance(token_id, str) else None,
            float(version) if isinstance(version := claims.get("cv"), int | float) else None,
        )
        self._verified[token] = verified
        if len(self._verified) > VERIFIED_CACHE_SIZE:
            self._verified.popitem(last=False)
        return verified

    def verify_refresh(self, token: str) -> dict[str, Any]:
        return self._decode(token, self.service + REFRESH_AUDIENCE_SUFFIX)

    def _decode(self, token: str, audience: str) -> dict[str, Any]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise Unauthorized("invalid token") from None
        if header.get("alg") != ALGORITHM:
            raise Unauthorized(f"invalid token: algorithm {header.get('alg')!r} is not accepted")
        if header.get("kid") != self.kid:
            raise Unauthorized("invalid token: unknown key id")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self.public_key,
                algorithms=[ALGORITHM],
                audience=audience,
                issuer=ISSUER,
                options={"require": ["exp", "iat", "iss", "aud", "sub"]},
                leeway=5,
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("token expired") from None
        except jwt.InvalidAudienceError:
            raise Unauthorized("invalid token: wrong audience") from None
        except jwt.InvalidIssuerError:
            raise Unauthorized("invalid token: wrong issuer") from None
        except jwt.PyJWTError as error:
            raise Unauthorized(f"invalid token: {error}") from None
        return claims
