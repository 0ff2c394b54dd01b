"""The account page: change the password; create, list and revoke personal access tokens."""

from __future__ import annotations

import dataclasses

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from cangku.auth.access import RateLimited
from cangku.auth.accounts import AccountError
from cangku.content.errors import RegistryError
from cangku.web.sessions import MAX_AGE_SECONDS
from cangku.web.site import PageError, SignInRequired, Site, Viewer


def routes(site: Site) -> list[BaseRoute]:
    def accounts_or_refuse(viewer: Viewer) -> None:
        if site.access is None:
            raise PageError(
                404, "No accounts", "Authentication is off (--open): there are no accounts."
            )
        if not viewer.signed_in:
            raise SignInRequired()

    async def render(
        request: Request,
        viewer: Viewer,
        *,
        message: str = "",
        error: str = "",
        new_token: str = "",
        status: int = 200,
    ) -> Response:
        assert site.access is not None and viewer.name is not None
        tokens = await site.access.accounts.list_tokens(viewer.name)
        return site.render(
            request,
            viewer,
            "account.html",
            {
                "tokens": [token for token in tokens if token.revoked_at is None],
                "message": message,
                "error": error,
                "new_token": new_token,
            },
            status,
        )

    async def account(request: Request, viewer: Viewer) -> Response:
        accounts_or_refuse(viewer)
        return await render(request, viewer)

    async def change_password(request: Request, viewer: Viewer) -> Response:
        accounts_or_refuse(viewer)
        assert site.access is not None and viewer.name is not None
        form = await site.checked_form(request, viewer)
        current = str(form.get("current_password") or "")
        new = str(form.get("new_password") or "")
        if new != str(form.get("repeat_password") or ""):
            return await render(request, viewer, error="The new passwords differ.", status=400)
        try:  # Rate-limited like any sign-in.
            principal = await site.access.check_credentials(request, viewer.name, current)
        except RateLimited as error:
            refused = await render(
                request, viewer, error="Too many failed attempts; try again later.", status=429
            )
            refused.headers.update(error.headers())  # Retry-After, as every 429 (RFC 6585 §4)
            return refused
        except RegistryError:
            principal = None
        if principal is None or principal.token_id is not None:
            return await render(
                request, viewer, error="The current password is not right.", status=400
            )
        try:
            await site.access.accounts.set_password(viewer.name, new)
        except (AccountError, ValueError) as error:
            return await render(request, viewer, error=str(error), status=400)
        message = "Your password was changed."
        if form.get("revoke_tokens") == "on":
            # Access tokens are separate credentials and survive a new password unless asked.
            revoked = await site.access.accounts.revoke_all_tokens(viewer.name)
            message += f" {revoked} access tokens were revoked."
        # Other sessions end (their credentials time is older); this one continues.
        changed = await site.access.accounts.principal(viewer.name)
        assert changed is not None and viewer.session.session_id is not None
        # A new session record as well, for the cookie's new 12 hours.
        session_id = await site.access.accounts.start_web_session(
            viewer.name, MAX_AGE_SECONDS, replaces=viewer.session.session_id
        )
        session = viewer.session.signed_in(viewer.name, changed.credentials_changed_at, session_id)
        # The page's forms must carry the new session's CSRF token, not the old one.
        viewer = dataclasses.replace(viewer, session=session)
        response = await render(request, viewer, message=message)
        site.cookies.write(request, response, session)
        return response

    async def create_token(request: Request, viewer: Viewer) -> Response:
        accounts_or_refuse(viewer)
        assert site.access is not None and viewer.name is not None
        form = await site.checked_form(request, viewer)
        try:
            secret = await site.access.accounts.create_token(
                viewer.name, str(form.get("name") or "").strip(), str(form.get("scope") or "")
            )
        except AccountError as error:
            return await render(request, viewer, error=str(error), status=400)
        return await render(request, viewer, new_token=secret)

    async def revoke_token(request: Request, viewer: Viewer) -> Response:
        accounts_or_refuse(viewer)
        assert site.access is not None and viewer.name is not None
        await site.checked_form(request, viewer)
        try:
            await site.access.accounts.revoke_token(viewer.name, request.path_params["token"])
        except AccountError as error:
            return await render(request, viewer, error=str(error), status=404)
        return await render(request, viewer, message="The token was revoked.")

    async def revoke_all_tokens(request: Request, viewer: Viewer) -> Response:
        accounts_or_refuse(viewer)
        assert site.access is not None and viewer.name is not None
        await site.checked_form(request, viewer)
        revoked = await site.access.accounts.revoke_all_tokens(viewer.name)
        return await render(request, viewer, message=f"{revoked} access tokens were revoked.")

    return [
        Route("/account", site.page(account), methods=["GET"]),
        Route("/account/tokens/revoke-all", site.page(revoke_all_tokens), methods=["POST"]),
        Route("/account/password", site.page(change_password), methods=["POST"]),
        Route("/account/tokens", site.page(create_token), methods=["POST"]),
        Route("/account/tokens/{token}/revoke", site.page(revoke_token), methods=["POST"]),
    ]
