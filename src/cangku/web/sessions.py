"""The browser session: a signed cookie naming the user, and the CSRF token of its forms.

The cookie holds no secret of the account, only its name, the time its credentials last
changed (a changed password or a disabled account ends every session), the id of the
session the server recorded at sign-in (signing out deletes that record, so a copy of the
cookie is worthless afterwards) and a random CSRF token that every state-changing form must
send back. Signed with a key kept in the data directory, so every replica sharing it and
the database accepts the same sessions.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from itsdangerous import BadSignature, URLSafeTimedSerializer
from starlette.requests import Request
from starlette.responses import Response

from cangku.keyfiles import read_or_create

COOKIE = "cangku_session"
MAX_AGE_SECONDS = 12 * 3600


@dataclass(frozen=True, slots=True)
class Session:
    csrf: str
    user: str | None = None
    credentials_changed_at: float = 0.0
    session_id: str | None = None  # the server's record (Accounts.start_web_session)

    def signed_in(self, user: str, credentials_changed_at: float, session_id: str) -> Session:
        # A fresh CSRF token at sign-in: one learnt before it is worthless after.
        return Session(secrets.token_urlsafe(32), user, credentials_changed_at, session_id)

    def signed_out(self) -> Session:
        return Session(secrets.token_urlsafe(32))

    def csrf_matches(self, sent: str | None) -> bool:
        return sent is not None and hmac.compare_digest(sent.encode(), self.csrf.encode())


def load_or_create_session_key(path: Path) -> bytes:
    """32 random bytes in a file readable only by the server's user, made on first start."""
    key = read_or_create(path, lambda: secrets.token_bytes(32))
    if len(key) < 32:
        raise ValueError(f"{path} must hold at least 32 bytes")
    return key


class SessionCookies:
    def __init__(self, key: bytes, scheme_of: Callable[[Request], str] | None = None) -> None:
        self.serializer = URLSafeTimedSerializer(key, salt="cangku-web-session")
        # The scheme the browser used (behind a trusted TLS proxy: https, as it reports).
        self.scheme_of = scheme_of or (lambda request: request.url.scheme)

    def read(self, request: Request) -> Session | None:
        value = request.cookies.get(COOKIE)
        if not value:
            return None
        try:
            data: Any = self.serializer.loads(value, max_age=MAX_AGE_SECONDS)
        except BadSignature:
            return None
        if not isinstance(data, dict) or not isinstance(data.get("csrf"), str):
            return None
        user = data.get("user")
        changed = data.get("changed", 0.0)
        session_id = data.get("sid")
        if (
            (user is not None and not isinstance(user, str))
            or not isinstance(changed, int | float)
            or (session_id is not None and not isinstance(session_id, str))
        ):
            return None
        return Session(data["csrf"], user, float(changed), session_id)

    def write(self, request: Request, response: Response, session: Session) -> None:
        value = self.serializer.dumps(
            {
                "csrf": session.csrf,
                "user": session.user,
                "changed": session.credentials_changed_at,
                "sid": session.session_id,
            }
        )
        response.set_cookie(
            COOKIE,
            value,
            max_age=MAX_AGE_SECONDS,
            path="/",
            httponly=True,
            samesite="lax",
            secure=self.scheme_of(request) == "https",
        )
