"""Sign in and sign out, with the same accounts (and passwords) as `docker login`."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from cangku.auth.access import RateLimited
from cangku.auth.errors import Unauthorized
from cangku.web.sessions import MAX_AGE_SECONDS
from cangku.web.site import Site, Viewer, safe_next


def routes(site: Site) -> list[BaseRoute]:
    def form_page(
        request: Request, viewer: Viewer, next_url: str, error: str = "", status: int = 200
    ) -> Response:
        return site.render(
            request,
            viewer,
            "signin.html",
            {"next": next_url, "error": error, "username": ""},
            status,
        )

    async def sign_in(request: Request, viewer: Viewer) -> Response:
        next_url = safe_next(request.query_params.get("next"))
        if site.access is None:
            return site.redirect(request, viewer, next_url)  # Open mode: nobody signs in.
        if request.method == "GET":
            return form_page(request, viewer, next_url)
        form = await site.checked_form(request, viewer)
        next_url = safe_next(str(form.get("next") or "/"))
        name = str(form.get("username") or "").strip()
        password = str(form.get("password") or "")
        principal = None
        try:
            if name and password:
                principal = await site.access.check_credentials(request, name, password)
        except RateLimited as error:
            refused = form_page(
                request, viewer, next_url, "Too many failed attempts; try again later.", 429
            )
            refused.headers.update(error.headers())  # Retry-After, as every 429 (RFC 6585 §4)
            return refused
        except Unauthorized:
            principal = None
        # Access tokens are for clients; the UI wants the password itself.
        if principal is None or principal.name is None or principal.token_id is not None:
            return form_page(request, viewer, next_url, "Incorrect username or password.", 401)
        # Signing in again (maybe as someone else) ends the session this cookie had.
        session_id = await site.access.accounts.start_web_session(
            principal.name, MAX_AGE_SECONDS, replaces=viewer.session.session_id
        )
        response = site.redirect(request, viewer, next_url)
        session = viewer.session.signed_in(
            principal.name, principal.credentials_changed_at, session_id
        )
        site.cookies.write(request, response, session)
        return response

    async def sign_out(request: Request, viewer: Viewer) -> Response:
        await site.checked_form(request, viewer)
        if site.access is not None and viewer.session.session_id is not None:
            await site.access.accounts.end_web_session(viewer.session.session_id)
        response = site.redirect(request, viewer, "/")
        site.cookies.write(request, response, viewer.session.signed_out())
        return response

    return [
        Route("/signin", site.page(sign_in), methods=["GET", "POST"]),
        Route("/signout", site.page(sign_out), methods=["POST"]),
    ]
