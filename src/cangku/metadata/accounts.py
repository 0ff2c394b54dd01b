"""Account rows: users, organizations and their members, personal access tokens.

Plain functions over a `Connection`; the use cases in `auth/accounts.py` choose the
transaction (`MetadataStore.read`/`write`) and keep the rules (name syntax, password
strength, who may do what). Times are Unix seconds (float).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import bindparam, delete, insert, select, update
from sqlalchemy.engine import Connection

from cangku.metadata.prepared import Prepared
from cangku.metadata.schema import access_tokens, organization_members, organizations, users
from cangku.metadata.upserts import upsert


@dataclass(frozen=True, slots=True)
class UserInfo:
    name: str
    is_admin: bool
    disabled: bool
    created_at: float


@dataclass(frozen=True, slots=True)
class TokenInfo:
    id: str
    name: str
    scope: str
    created_at: float
    last_used_at: float | None
    revoked_at: float | None


@dataclass(frozen=True, slots=True)
class StoredPassword:
    """What a password sign-in checks: the bcrypt hash and whether the account is disabled."""

    password_hash: str
    disabled: bool


@dataclass(frozen=True, slots=True)
class StoredToken:
    """What a token sign-in checks: sha256 of the secret (hex), its scope, when last used."""

    secret_hash: str
    scope: str
    last_used_at: float | None


@dataclass(frozen=True, slots=True)
class AccountState:
    """The user row fields a principal is built from."""

    id: int
    is_admin: bool
    disabled: bool
    credentials_changed_at: float


# Hot reads (every authenticated request without a cache hit), built once.
USER_ID = select(users.c.id).where(users.c.name == bindparam("name"))
ORGANIZATION_ID = select(organizations.c.id).where(organizations.c.name == bindparam("name"))
PASSWORD = select(users.c.password_hash, users.c.disabled).where(users.c.name == bindparam("name"))
ACTIVE_TOKEN = (
    select(access_tokens.c.secret_hash, access_tokens.c.scope, access_tokens.c.last_used_at)
    .select_from(access_tokens.join(users, users.c.id == access_tokens.c.user_id))
    .where(
        access_tokens.c.id == bindparam("token_id"),
        users.c.name == bindparam("name"),
        access_tokens.c.revoked_at.is_(None),
    )
)
TOUCH_TOKEN = (
    update(access_tokens)
    .where(access_tokens.c.id == bindparam("token_id"))
    .values(last_used_at=bindparam("used_at"))
)
ACCOUNT_STATE = Prepared(
    select(users.c.id, users.c.is_admin, users.c.disabled, users.c.credentials_changed_at).where(
        users.c.name == bindparam("name")
    )
)
TOKEN_SCOPE = Prepared(
    select(access_tokens.c.scope).where(
        access_tokens.c.id == bindparam("token_id"),
        access_tokens.c.user_id == bindparam("user_id"),
        access_tokens.c.revoked_at.is_(None),
    )
)
MEMBERSHIPS = Prepared(
    select(organizations.c.name, organization_members.c.role)
    .select_from(
        organization_members.join(
            organizations, organizations.c.id == organization_members.c.organization_id
        )
    )
    .where(organization_members.c.user_id == bindparam("user_id"))
)


# -- users -----------------------------------------------------------------------------------
def user_id(connection: Connection, name: str) -> int | None:
    """The row id of the user `name`, None when there is none."""
    return connection.scalar(USER_ID, {"name": name})


def any_user(connection: Connection) -> bool:
    return connection.scalar(select(users.c.id).limit(1)) is not None


def insert_user(
    connection: Connection, name: str, password_hash: str, *, admin: bool, now: float
) -> None:
    connection.execute(
        insert(users).values(
            name=name,
            password_hash=password_hash,
            is_admin=admin,
            disabled=False,
            created_at=now,
            credentials_changed_at=now,
        )
    )


def update_user(
    connection: Connection,
    name: str,
    *,
    password_hash: str | None = None,
    disabled: bool | None = None,
    credentials_changed_at: float | None = None,
) -> int:
    """Change the given fields of the user `name`; returns 1, or 0 when there is no such user."""
    values: dict[str, object] = {}
    if password_hash is not None:
        values["password_hash"] = password_hash
    if disabled is not None:
        values["disabled"] = disabled
    if credentials_changed_at is not None:
        values["credentials_changed_at"] = credentials_changed_at
    if not values:
        raise ValueError("update_user needs at least one field to change")
    return connection.execute(update(users).where(users.c.name == name).values(values)).rowcount


def delete_user(connection: Connection, name: str) -> int:
    """Delete the user row (its tokens, sessions and memberships cascade); returns the count."""
    return connection.execute(delete(users).where(users.c.name == name)).rowcount


def list_users(connection: Connection) -> list[UserInfo]:
    """Every user, by name."""
    return [
        UserInfo(row.name, row.is_admin, row.disabled, row.created_at)
        for row in connection.execute(select(users).order_by(users.c.name))
    ]


def stored_password(connection: Connection, name: str) -> StoredPassword | None:
    row = connection.execute(PASSWORD, {"name": name}).first()
    return None if row is None else StoredPassword(row.password_hash, row.disabled)


def account_state(connection: Connection, name: str) -> AccountState | None:
    row = ACCOUNT_STATE.first(connection, {"name": name})
    if row is None:
        return None
    return AccountState(row.id, row.is_admin, row.disabled, row.credentials_changed_at)


def namespace_holder(connection: Connection, name: str) -> str | None:
    """ "user" or "organization" when that kind of account holds the name, else None: users
    and organizations share one space of namespace names."""
    if user_id(connection, name) is not None:
        return "user"
    if organization_id(connection, name) is not None:
        return "organization"
    return None


# -- organizations ---------------------------------------------------------------------------
def organization_id(connection: Connection, name: str) -> int | None:
    return connection.scalar(ORGANIZATION_ID, {"name": name})


def insert_organization(connection: Connection, name: str, *, now: float) -> None:
    connection.execute(insert(organizations).values(name=name, created_at=now))


def delete_organization(connection: Connection, name: str) -> int:
    """Delete the organization row (its memberships cascade); returns the count."""
    return connection.execute(delete(organizations).where(organizations.c.name == name)).rowcount


def set_membership(
    connection: Connection, organization_id: int, user_id: int, role: str | None
) -> None:
    """Give the user `role` in the organization; None removes the membership."""
    member = (organization_members.c.organization_id == organization_id) & (
        organization_members.c.user_id == user_id
    )
    if role is None:
        connection.execute(delete(organization_members).where(member))
        return
    upsert(
        connection,
        organization_members,
        {"organization_id": organization_id, "user_id": user_id},
        {"role": role},
    )


def list_organizations(connection: Connection) -> dict[str, dict[str, str]]:
    """Organization → {member: role}, organizations by name."""
    result: dict[str, dict[str, str]] = {
        name: {} for name in connection.scalars(select(organizations.c.name))
    }
    query = select(
        organizations.c.name, users.c.name.label("user"), organization_members.c.role
    ).select_from(
        organization_members.join(
            organizations, organizations.c.id == organization_members.c.organization_id
        ).join(users, users.c.id == organization_members.c.user_id)
    )
    for row in connection.execute(query):
        result[row.name][row.user] = row.role
    return dict(sorted(result.items()))


def memberships(connection: Connection, user_id: int) -> list[tuple[str, str]]:
    """(organization, role) pairs of a user."""
    return [(row.name, row.role) for row in MEMBERSHIPS.rows(connection, {"user_id": user_id})]


# -- personal access tokens ------------------------------------------------------------------
def has_active_token_named(connection: Connection, user_id: int, name: str) -> bool:
    query = select(access_tokens.c.id).where(
        access_tokens.c.user_id == user_id,
        access_tokens.c.name == name,
        access_tokens.c.revoked_at.is_(None),
    )
    return connection.scalar(query) is not None


def insert_token(
    connection: Connection,
    *,
    token_id: str,
    user_id: int,
    name: str,
    secret_hash: str,
    scope: str,
    now: float,
) -> None:
    connection.execute(
        insert(access_tokens).values(
            id=token_id,
            user_id=user_id,
            name=name,
            secret_hash=secret_hash,
            scope=scope,
            created_at=now,
        )
    )


def list_tokens(connection: Connection, user: str) -> list[TokenInfo]:
    """The user's tokens, revoked ones included, oldest first."""
    query = (
        select(access_tokens)
        .select_from(access_tokens.join(users, users.c.id == access_tokens.c.user_id))
        .where(users.c.name == user)
        .order_by(access_tokens.c.created_at)
    )
    return [
        TokenInfo(row.id, row.name, row.scope, row.created_at, row.last_used_at, row.revoked_at)
        for row in connection.execute(query)
    ]


def revoke_tokens(
    connection: Connection, user_id: int, *, now: float, name_or_id: str | None = None
) -> int:
    """Revoke the user's active tokens (only the one with that name or id, if given);
    returns how many were revoked."""
    conditions = [access_tokens.c.user_id == user_id, access_tokens.c.revoked_at.is_(None)]
    if name_or_id is not None:
        conditions.append((access_tokens.c.name == name_or_id) | (access_tokens.c.id == name_or_id))
    return connection.execute(
        update(access_tokens).where(*conditions).values(revoked_at=now)
    ).rowcount


def active_token(connection: Connection, user: str, token_id: str) -> StoredToken | None:
    """The active (not revoked) token `token_id` of the user named `user`."""
    row = connection.execute(ACTIVE_TOKEN, {"token_id": token_id, "name": user}).first()
    return None if row is None else StoredToken(row.secret_hash, row.scope, row.last_used_at)


def touch_token(connection: Connection, token_id: str, now: float) -> None:
    connection.execute(TOUCH_TOKEN, {"token_id": token_id, "used_at": now})


def token_scope(connection: Connection, token_id: str, user_id: int) -> str | None:
    """The scope of the user's active token `token_id`, None when revoked or not theirs."""
    return TOKEN_SCOPE.scalar(connection, {"token_id": token_id, "user_id": user_id})  # type: ignore[no-any-return]
