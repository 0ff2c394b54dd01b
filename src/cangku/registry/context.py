"""Who asks for a change, carried into the mutating use cases instead of HTTP scope keys."""

from __future__ import annotations

import contextvars
from dataclasses import dataclass

# The id of the request being served (set by observability.py's access logging), for every
# log record written while it runs and for the RequestContext of its use cases.
REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "cangku_request_id", default=None
)


@dataclass(frozen=True, slots=True)
class RequestContext:
    """The caller of one request, as the use cases see it.

    `caller`: the authenticated user's name; None for an anonymous caller, the
    no-authentication mode or in-process use (the CLI, tests). `request_id`: the id the
    access log and the `X-Request-Id` reply header carry (observability.py); None outside
    HTTP. `address`: the client's IP address as the access control trusts it (behind a
    proxy, the forwarded one); None outside HTTP.
    """

    caller: str | None = None
    request_id: str | None = None
    address: str | None = None

    @property
    def owner(self) -> str | None:
        """Whom an upload session counts against (registry/upload_limits.py): the user, or
        `address:<ip>` for an anonymous caller; None (not counted) for in-process use."""
        if self.caller is not None:
            return self.caller
        if self.address is not None:
            return f"address:{self.address}"
        return None


# In-process use: nobody to record, nothing to count.
IN_PROCESS = RequestContext()
