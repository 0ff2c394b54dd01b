"""Administration: users and organizations (create, disable, delete, members and roles)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from cangku.auth.accounts import AccountError, Accounts
from cangku.auth.permissions import ROLES
from cangku.web.site import PageError, SignInRequired, Site, Viewer
from cangku.web.usage_pages import usage_charts

# An administrator's change: (accounts, request, who asked, form fields) → the message shown.
Change = Callable[[Accounts, Request, Viewer, dict[str, str]], Awaitable[str]]


def routes(site: Site) -> list[BaseRoute]:
    def accounts_of(viewer: Viewer) -> Accounts:
        if site.access is None:
            raise PageError(
                404, "No accounts", "Authentication is off (--open): there are no accounts."
            )
        if not viewer.signed_in:
            raise SignInRequired()
        if not viewer.is_admin:
            raise PageError(403, "Not allowed", "Only administrators may manage accounts.")
        return site.access.accounts

    async def render(
        request: Request, viewer: Viewer, *, message: str = "", error: str = "", status: int = 200
    ) -> Response:
        accounts = accounts_of(viewer)
        return site.render(
            request,
            viewer,
            "admin.html",
            {
                "users": await accounts.list_users(),
                "organizations": await accounts.list_organizations(),
                "roles": list(ROLES),
                "message": message,
                "error": error,
                # Issue 17: usage over time, the whole registry.
                **await usage_charts(site, None),
            },
            status,
        )

    async def admin(request: Request, viewer: Viewer) -> Response:
        return await render(request, viewer)

    def change(action: Change) -> Callable[[Request, Viewer], Awaitable[Response]]:
        async def run(request: Request, viewer: Viewer) -> Response:
            accounts = accounts_of(viewer)
            form = await site.checked_form(request, viewer)
            fields = {key: str(value) for key, value in form.items() if isinstance(value, str)}
            try:
                message = await action(accounts, request, viewer, fields)
            except (AccountError, ValueError) as error:
                return await render(request, viewer, error=str(error), status=400)
            return await render(request, viewer, message=message)

        return run

    async def add_user(
        accounts: Accounts, request: Request, viewer: Viewer, form: dict[str, str]
    ) -> str:
        name = form.get("name", "").strip()
        await accounts.add_user(name, form.get("password", ""), admin=form.get("admin") == "on")
        return f"The user {name} was created."

    async def set_user_state(
        accounts: Accounts, request: Request, viewer: Viewer, form: dict[str, str]
    ) -> str:
        name = request.path_params["user"]
        disabled = request.url.path.endswith("/disable")
        if disabled:
            _refuse_self(viewer, name)
        await accounts.set_disabled(name, disabled)
        return f"The user {name} was {'disabled' if disabled else 'enabled'}."

    async def delete_user(
        accounts: Accounts, request: Request, viewer: Viewer, form: dict[str, str]
    ) -> str:
        name = request.path_params["user"]
        _refuse_self(viewer, name)
        await accounts.delete_user(name, delete_repositories=form.get("repositories") == "on")
        return f"The user {name} was deleted."

    async def add_organization(
        accounts: Accounts, request: Request, viewer: Viewer, form: dict[str, str]
    ) -> str:
        name = form.get("name", "").strip()
        await accounts.add_organization(name)
        return f"The organization {name} was created."

    async def delete_organization(
        accounts: Accounts, request: Request, viewer: Viewer, form: dict[str, str]
    ) -> str:
        name = request.path_params["organization"]
        await accounts.delete_organization(
            name, delete_repositories=form.get("repositories") == "on"
        )
        return f"The organization {name} was deleted."

    async def set_member(
        accounts: Accounts, request: Request, viewer: Viewer, form: dict[str, str]
    ) -> str:
        organization = request.path_params["organization"]
        user = form.get("user", "").strip()
        role = form.get("role") or None
        if role == "remove":
            role = None
        await accounts.set_member(organization, user, role)
        if role is None:
            return f"{user} is no longer a member of {organization}."
        return f"{user} is now {role} of {organization}."

    page = site.page
    return [
        Route("/admin", page(admin), methods=["GET"]),
        Route("/admin/users", page(change(add_user)), methods=["POST"]),
        Route("/admin/users/{user}/delete", page(change(delete_user)), methods=["POST"]),
        Route("/admin/users/{user}/disable", page(change(set_user_state)), methods=["POST"]),
        Route("/admin/users/{user}/enable", page(change(set_user_state)), methods=["POST"]),
        Route("/admin/organizations", page(change(add_organization)), methods=["POST"]),
        Route(
            "/admin/organizations/{organization}/delete",
            page(change(delete_organization)),
            methods=["POST"],
        ),
        Route(
            "/admin/organizations/{organization}/members",
            page(change(set_member)),
            methods=["POST"],
        ),
    ]


def _refuse_self(viewer: Viewer, name: str) -> None:
    """An administrator who locks themselves out needs the CLI to get back in.

    Who asks is the authenticated caller of this request (`Viewer`), never the access log's
    `user_name` field: that is a record for the log, not a credential."""
    if viewer.name == name:
        raise AccountError("you cannot disable or delete your own account here")
