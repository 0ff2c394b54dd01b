"""The errors of authentication: a request without acceptable credentials (401).

They exist only at the HTTP boundary, so they live here rather than among the domain errors
of `content/errors.py`; like those they declare their code, status and headers once
(`cangku.http_errors` renders them). RFC 9110 §15.5.2: every 401 carries a challenge, which
the surface answering adds (Bearer on /v2 and /api/v1 via `Challenge`, Basic on /auth/token).
"""

from __future__ import annotations

from cangku.content.errors import RegistryError


class Unauthorized(RegistryError):
    """Credentials missing, malformed, wrong or expired (OCI code UNAUTHORIZED, 401)."""

    code = "UNAUTHORIZED"
    status = 401


class Challenge(Unauthorized):
    """401 with a WWW-Authenticate header telling the client where to get a token
    (Docker token-auth spec; RFC 6750 §3 for `error="insufficient_scope"`)."""

    def __init__(self, message: str, header: str) -> None:
        super().__init__(message)
        self.header = header

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": self.header}
