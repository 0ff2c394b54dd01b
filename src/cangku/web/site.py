"""What every page shares: who is looking, templates, the CSRF check, error pages.

Pages are rendered on the server with Jinja2 (autoescape on: every name, tag, label and
history line from a client is text, never markup). Every change is a POST whose form carries
the session's CSRF token; permissions are checked here, on the server, whatever the page shows.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import jinja2
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from cangku.auth.access import AccessControl, Caller
from cangku.auth.permissions import ALL_ACTIONS, ANONYMOUS, PULL, Principal
from cangku.config import ProxySettings
from cangku.content.errors import RegistryError
from cangku.content.units import format_size
from cangku.http_errors import page_status, page_title
from cangku.registry import Registry
from cangku.registry.context import REQUEST_ID, RequestContext
from cangku.registry.records import Visibility
from cangku.web.sessions import Session, SessionCookies

# Everything allowed: no inline script or style, nothing from another origin.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
# In open mode (no authentication) everyone may do everything.
OPEN_PRINCIPAL = Principal(name=None, is_admin=True)


class PageError(Exception):
    """Stop and show an error page with this status."""

    def __init__(self, status: int, title: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.title = title
        self.message = message


class SignInRequired(Exception):
    pass


@dataclass(frozen=True, slots=True)
class Viewer:
    """The person looking at a page."""

    session: Session
    principal: Principal
    # No valid cookie came with the request: the response sets one.
    new_session: bool
    open_mode: bool

    @property
    def name(self) -> str | None:
        return self.principal.name

    @property
    def signed_in(self) -> bool:
        return self.principal.name is not None

    @property
    def is_admin(self) -> bool:
        return self.principal.is_admin


def format_time(seconds: float | None) -> str:
    if not seconds:
        return "—"
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(seconds))


def short_digest(digest: str | None) -> str:
    if not digest:
        return ""
    algorithm, _, encoded = digest.partition(":")
    return f"{algorithm}:{encoded[:12]}"


# Page numbers from the address bar stop here: offsets stay far inside SQL's 64-bit integers.
MAX_PAGE_NUMBER = 1_000_000


def page_number(value: str | None) -> int:
    """A `?page=` value as a page number from 1 to MAX_PAGE_NUMBER: anything that is not
    plain decimal digits is page 1, and a larger number is MAX_PAGE_NUMBER (the caller then
    shows its last page)."""
    if not value or not value.isascii() or not value.isdigit():
        return 1
    if len(value) > len(str(MAX_PAGE_NUMBER)):
        return MAX_PAGE_NUMBER
    return min(max(int(value), 1), MAX_PAGE_NUMBER)


def safe_next(target: str | None) -> str:
    """Only a path on this site: never `//host` or `https://host`, which leave it."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def build_templates() -> jinja2.Environment:
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("cangku.web", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters["size"] = format_size
    environment.filters["time"] = format_time
    environment.filters["short"] = short_digest
    environment.filters["path"] = lambda value: quote(str(value), safe="/:@")
    return environment


class Site:
    def __init__(
        self,
        registry: Registry,
        access: AccessControl | None,
        cookies: SessionCookies,
        templates: jinja2.Environment | None = None,
        proxy: ProxySettings | None = None,
    ) -> None:
        self.registry = registry
        self.access = access
        self.cookies = cookies
        self.templates = templates or build_templates()
        # Issue 13: the upstreams mirrored (web/mirrors.py); the nav links to /mirrors.
        self.proxy = proxy or ProxySettings()

    # -- who is looking --------------------------------------------------------------------
    def context(self, request: Request, viewer: Viewer) -> RequestContext:
        """The signed-in viewer as the mutating use cases see them (tag history's actor),
        with the request id and the client address (behind trusted proxies, forwarded)."""
        if self.access is not None:
            address = self.access.client_address(request)
        else:
            address = request.client.host if request.client else "-"
        return RequestContext(caller=viewer.name, request_id=REQUEST_ID.get(), address=address)

    async def viewer(self, request: Request) -> Viewer:
        session = self.cookies.read(request)
        new_session = session is None
        if session is None:
            session = Session("").signed_out()
        if self.access is None:
            return Viewer(session, OPEN_PRINCIPAL, new_session, open_mode=True)
        principal = ANONYMOUS
        accounts = self.access.accounts
        if (
            session.user is not None
            and session.session_id is not None
            # Signed out (from this cookie or a copy of it): the session is over.
            and await accounts.web_session_active(session.user, session.session_id)
        ):
            loaded = await accounts.principal(session.user)
            # A changed password, a disabled or deleted account: the session is over too.
            if (
                loaded is not None
                and loaded.credentials_changed_at == session.credentials_changed_at
            ):
                principal = loaded
        request.scope["user_name"] = principal.name or "-"
        return Viewer(session, principal, new_session, open_mode=False)

    async def actions(self, viewer: Viewer, repository: str) -> frozenset[str]:
        if self.access is None:
            return ALL_ACTIONS
        open_to = await self.access.accounts.open_to(viewer.principal, repository)
        return viewer.principal.actions(repository, open_to)

    async def is_public(self, repository: str) -> bool:
        return True if self.access is None else await self.access.accounts.is_public(repository)

    async def visibility(self, viewer: Viewer) -> Visibility | None:
        if self.access is None:
            return None
        return await self.access.visibility(Caller(viewer.principal))

    async def require_visible(self, viewer: Viewer, repository: str) -> frozenset[str]:
        """The viewer's actions on a repository they may see; otherwise sign in, or 404."""
        actions = await self.actions(viewer, repository)
        if PULL in actions:
            return actions
        if not viewer.signed_in:
            raise SignInRequired()
        # The same answer as for a repository that does not exist: nothing leaks.
        raise not_found(f"There is no repository {repository!r} that you may see.")

    async def require(self, viewer: Viewer, repository: str, action: str) -> None:
        """For changes: refuse (403) unless the viewer may do `action` on the repository."""
        if action not in await self.actions(viewer, repository):
            raise PageError(
                403, "Not allowed", f"You may not {action} in the repository {repository!r}."
            )

    async def checked_form(self, request: Request, viewer: Viewer) -> FormData:
        """The posted form, if it carries this session's CSRF token and, when the browser
        names the page's origin (`Origin`, RFC 6454 section 7), it is this site (else 403)."""
        self._check_origin(request)
        # Small forms only: no file parts, few fields, short values.
        form = await request.form(max_files=0, max_fields=50, max_part_size=64 * 1024)
        sent = form.get("csrf")
        if viewer.new_session or not viewer.session.csrf_matches(
            sent if isinstance(sent, str) else None
        ):
            raise PageError(
                403,
                "Form expired",
                "The form did not come from this page, or your session changed. "
                "Go back, reload the page and try again.",
            )
        return form

    def _check_origin(self, request: Request) -> None:
        # A second line behind the CSRF token: a token leaked to another site (a copied
        # page, a log) is still no use from that site's forms. "null" (a sandboxed frame, a
        # redirect across origins) is refused too. Older browsers send no Origin: allowed.
        origin = request.headers.get("origin")
        if origin is None:
            return
        if self.access is not None:
            ours = self.access.base_url(request)
        else:
            ours = f"{request.url.scheme}://{request.headers.get('host', '')}"
        if origin.lower() != ours.lower():
            raise PageError(
                403,
                "Form from another site",
                "This form was posted from another site, not from this registry's pages.",
            )

    # -- responses -------------------------------------------------------------------------
    def render(
        self,
        request: Request,
        viewer: Viewer,
        template: str,
        context: dict[str, Any],
        status: int = 200,
    ) -> Response:
        body = self.templates.get_template(template).render(
            viewer=viewer,
            csrf=viewer.session.csrf,
            request_path=request.url.path,
            mirrors_nav=bool(self.proxy.upstreams),
            **context,
        )
        response = HTMLResponse(body, status_code=status, headers=SECURITY_HEADERS)
        if viewer.new_session:
            self.cookies.write(request, response, viewer.session)
        return response

    def redirect(self, request: Request, viewer: Viewer, target: str) -> Response:
        response = RedirectResponse(target, status_code=303, headers=SECURITY_HEADERS)
        if viewer.new_session:
            self.cookies.write(request, response, viewer.session)
        return response

    def error_page(
        self,
        request: Request,
        viewer: Viewer | None,
        status: int,
        title: str,
        message: str,
        headers: dict[str, str] | None = None,
    ) -> Response:
        if viewer is None:
            viewer = Viewer(Session("").signed_out(), ANONYMOUS, True, self.access is None)
        response = self.render(
            request, viewer, "error.html", {"title": title, "message": message}, status
        )
        response.headers.update(headers or {})
        return response

    def page(self, handler: PageHandler) -> Callable[[Request], Awaitable[Response]]:
        """A route: finds the viewer, runs the handler, turns errors into pages."""

        async def run(request: Request) -> Response:
            viewer = None
            try:
                viewer = await self.viewer(request)
                return await handler(request, viewer)
            except SignInRequired:
                target = quote(request.url.path, safe="/")
                return self.redirect(
                    request, viewer or await self.viewer(request), f"/signin?next={target}"
                )
            except PageError as error:
                return self.error_page(request, viewer, error.status, error.title, error.message)
            except RegistryError as error:
                status = page_status(error)
                # The error's headers (Retry-After …) belong to its own status only.
                headers = error.headers() if status == error.status else None
                return self.error_page(
                    request, viewer, status, page_title(status), error.message, headers
                )

        return run


PageHandler = Callable[[Request, Viewer], Awaitable[Response]]


def not_found(message: str) -> PageError:
    return PageError(404, "Not found", message)
