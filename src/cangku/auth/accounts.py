"""Accounts: users, organizations, access tokens, repository visibility.

All of it lives in the metadata database, so the CLI can change accounts while the server
runs and every replica sees the change. The rows are read and written by the row modules
`metadata/accounts.py`, `web_sessions.py`, `visibility.py` and `namespaces.py`; this module
keeps the rules and the transaction boundaries.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import time
from functools import partial
from pathlib import Path

import anyio.to_thread

from cangku.auth import passwords
from cangku.auth.passwords import (
    bcrypt_cost,
    check_new_password,
    dummy_hash,
    generate_password,
    hash_password,
    verify_password,
)
from cangku.auth.permissions import ALL_ACTIONS, ROLES, TOKEN_SCOPES, Principal
from cangku.config import ProxySettings, UpstreamSettings
from cangku.content.names import validate_repository_name
from cangku.metadata import (
    Connection,
    MetadataStore,
    locks,
    namespaces,
    visibility,
    web_sessions,
)
from cangku.metadata import accounts as rows
from cangku.metadata.accounts import TokenInfo, UserInfo
from cangku.registry.browse import remove_repository
from cangku.registry.context import IN_PROCESS
from cangku.registry.upload_limits import SessionLedger

# An account or organization name is one repository-name component: it is a namespace.
ACCOUNT_NAME = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
MAX_ACCOUNT_NAME = 64
# Names an htpasswd import creates per transaction (one advisory lock each; see
# `import_htpasswd`).
IMPORT_BATCH = 500
# Personal access tokens look like `ckt_<id>_<secret>`; only sha256(secret) is stored
# (the secret is 32 random bytes, so a slow hash adds nothing).
TOKEN_PATTERN = re.compile(r"ckt_([a-f0-9]{32})_([A-Za-z0-9_-]{43})")
# How often a token's last-used time is written (not on every request).
LAST_USED_RESOLUTION = 60.0


class AccountError(ValueError):
    """A refused account change, with a message for the person who asked."""


def validate_account_name(name: str) -> str:
    if len(name) > MAX_ACCOUNT_NAME or not ACCOUNT_NAME.fullmatch(name):
        raise AccountError(
            f"invalid name {name[:80]!r}: lowercase letters, digits and . _ - separators"
        )
    return name


class Accounts:
    def __init__(
        self,
        metadata: MetadataStore,
        *,
        public_by_default: bool = False,
        mirrors: ProxySettings | None = None,
    ) -> None:
        """`mirrors`: the pull-through cache's upstreams, whose repositories (`<upstream>/…`)
        follow the upstream's `public` when they have no visibility of their own."""
        self.metadata = metadata
        self.public_by_default = public_by_default
        self.mirrors = mirrors or ProxySettings()

    # -- users -----------------------------------------------------------------------------
    async def add_user(self, name: str, password: str, *, admin: bool = False) -> None:
        validate_account_name(name)
        check_new_password(password)
        password_hash = await anyio.to_thread.run_sync(hash_password, password)

        def add(connection: Connection) -> None:
            _take_namespaces(connection, [name])
            _refuse_taken_namespace(connection, name)
            rows.insert_user(connection, name, password_hash, admin=admin, now=time.time())

        await self.metadata.write(add)

    async def set_password(self, name: str, password: str) -> None:
        check_new_password(password)
        password_hash = await anyio.to_thread.run_sync(hash_password, password)
        changed = await self.metadata.write(
            lambda c: rows.update_user(
                c, name, password_hash=password_hash, credentials_changed_at=time.time()
            )
        )
        if not changed:
            raise AccountError(f"no user {name!r}")

    async def set_disabled(self, name: str, disabled: bool) -> None:
        changed = await self.metadata.write(
            lambda c: rows.update_user(
                c, name, disabled=disabled, credentials_changed_at=time.time()
            )
        )
        if not changed:
            raise AccountError(f"no user {name!r}")

    async def delete_user(self, name: str, *, delete_repositories: bool = False) -> None:
        """Delete a user and everything of its namespace (see `_release_namespace`).

        Raises AccountError when the user does not exist, or still owns repositories with
        images and `delete_repositories` is false: deleting those is an explicit choice."""

        def remove(connection: Connection) -> int:
            # Alone against the namespace's pushes (metadata/locks.py): none lands between
            # the check for images and the deletion of its repositories.
            locks.hold(connection, namespaces=[name])
            if rows.user_id(connection, name) is None:
                return 0
            _release_namespace(connection, name, delete_repositories)
            return rows.delete_user(connection, name)

        # Its open sessions' rows go with it: also those this process has not written yet.
        await SessionLedger.for_store(self.metadata).drop_namespace(name)
        if not await self.metadata.write(remove):
            raise AccountError(f"no user {name!r}")

    async def list_users(self) -> list[UserInfo]:
        return await self.metadata.read(rows.list_users)

    async def import_htpasswd(self, text: str) -> tuple[list[str], list[str]]:
        """Add the bcrypt entries of an htpasswd file; returns (added, skipped with reason)."""
        added: list[str] = []
        skipped: list[str] = []
        entries: list[tuple[str, str]] = []
        for number, line in enumerate(text.splitlines(), start=1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            name, _, password_hash = line.partition(":")
            if not password_hash.startswith(("$2y$", "$2b$", "$2a$")):
                skipped.append(f"line {number} ({name}): not a bcrypt hash")
                continue
            try:
                validate_account_name(name)
            except AccountError as error:
                skipped.append(f"line {number}: {error}")
                continue
            entries.append((name, password_hash.replace("$2y$", "$2b$", 1)))

        def add(
            connection: Connection, batch: list[tuple[str, str]]
        ) -> tuple[list[str], list[str]]:
            _take_namespaces(connection, [name for name, _ in batch])
            batch_added: list[str] = []
            batch_skipped: list[str] = []
            for name, password_hash in batch:
                try:
                    _refuse_taken_namespace(connection, name)
                except AccountError as error:
                    batch_skipped.append(str(error))
                    continue
                rows.insert_user(connection, name, password_hash, admin=False, now=time.time())
                batch_added.append(name)
            return batch_added, batch_skipped

        # Bounded batches, each its own transaction: every name's lock lasts until its
        # transaction ends, and PostgreSQL's shared lock table holds only about
        # max_locks_per_transaction x max_connections (6,400 by default) for all sessions;
        # one transaction over a large file ended in "out of shared memory". Each batch is
        # still alone against every other creation of its names; a name repeated in a later
        # batch finds the earlier one committed and is skipped as taken.
        for first in range(0, len(entries), IMPORT_BATCH):
            batch = entries[first : first + IMPORT_BATCH]
            batch_added, batch_skipped = await self.metadata.write(partial(add, batch=batch))
            added += batch_added
            skipped += batch_skipped
        return added, skipped

    async def ensure_initial_admin(self, data_dir: Path, password: str | None) -> str | None:
        """On an empty user table, create `admin`; returns a generated password to show once."""
        if await self.metadata.read(rows.any_user):
            return None
        generated = password is None
        password = password or generate_password()
        try:
            await self.add_user("admin", password, admin=True)
        except AccountError:
            return None  # Another process was first.
        if not generated:
            return None
        secret_file = data_dir / "initial-admin-password"
        descriptor = os.open(secret_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as file:
            file.write(password + "\n")
        return password

    # -- organizations ---------------------------------------------------------------------
    async def add_organization(self, name: str) -> None:
        validate_account_name(name)

        def add(connection: Connection) -> None:
            _take_namespaces(connection, [name])
            _refuse_taken_namespace(connection, name)
            rows.insert_organization(connection, name, now=time.time())

        await self.metadata.write(add)

    async def delete_organization(self, name: str, *, delete_repositories: bool = False) -> None:
        """As `delete_user`, for an organization."""

        def remove(connection: Connection) -> int:
            # Alone against the namespace's pushes (metadata/locks.py): none lands between
            # the check for images and the deletion of its repositories.
            locks.hold(connection, namespaces=[name])
            if rows.organization_id(connection, name) is None:
                return 0
            _release_namespace(connection, name, delete_repositories)
            return rows.delete_organization(connection, name)

        # Its open sessions' rows go with it: also those this process has not written yet.
        await SessionLedger.for_store(self.metadata).drop_namespace(name)
        if not await self.metadata.write(remove):
            raise AccountError(f"no organization {name!r}")

    async def set_member(self, organization: str, user: str, role: str | None) -> None:
        """Add or change a member's role; role None removes the member."""
        if role is not None and role not in ROLES:
            raise AccountError(f"role must be one of {', '.join(ROLES)}")

        def change(connection: Connection) -> None:
            organization_id = rows.organization_id(connection, organization)
            if organization_id is None:
                raise AccountError(f"no organization {organization!r}")
            user_id = rows.user_id(connection, user)
            if user_id is None:
                raise AccountError(f"no user {user!r}")
            rows.set_membership(connection, organization_id, user_id, role)

        await self.metadata.write(change)

    async def list_organizations(self) -> dict[str, dict[str, str]]:
        """Organization → {member: role}."""
        return await self.metadata.read(rows.list_organizations)

    # -- access tokens ---------------------------------------------------------------------
    async def create_token(self, user: str, name: str, scope: str) -> str:
        """A new personal access token; the returned secret is never shown again."""
        if scope not in TOKEN_SCOPES:
            raise AccountError("scope must be read or write")
        if not name or len(name) > 64 or not name.isprintable():
            raise AccountError("a token needs a printable name of at most 64 characters")
        token_id = secrets.token_hex(16)
        secret = secrets.token_urlsafe(32)

        def add(connection: Connection) -> None:
            user_id = rows.user_id(connection, user)
            if user_id is None:
                raise AccountError(f"no user {user!r}")
            if rows.has_active_token_named(connection, user_id, name):
                raise AccountError(f"{user} already has a token named {name!r}")
            rows.insert_token(
                connection,
                token_id=token_id,
                user_id=user_id,
                name=name,
                secret_hash=_secret_hash(secret),
                scope=scope,
                now=time.time(),
            )

        await self.metadata.write(add)
        return f"ckt_{token_id}_{secret}"

    async def list_tokens(self, user: str) -> list[TokenInfo]:
        return await self.metadata.read(lambda c: rows.list_tokens(c, user))

    async def revoke_token(self, user: str, name_or_id: str) -> None:
        def revoke(connection: Connection) -> int:
            user_id = rows.user_id(connection, user)
            if user_id is None:
                return 0
            return rows.revoke_tokens(connection, user_id, now=time.time(), name_or_id=name_or_id)

        if not await self.metadata.write(revoke):
            raise AccountError(f"{user} has no active token {name_or_id!r}")

    async def revoke_all_tokens(self, user: str) -> int:
        """Revoke every active access token of `user` (a password change keeps them: they
        are separate credentials, e.g. of CI jobs); returns how many were revoked."""

        def revoke(connection: Connection) -> int:
            user_id = rows.user_id(connection, user)
            if user_id is None:
                raise AccountError(f"no user {user!r}")
            return rows.revoke_tokens(connection, user_id, now=time.time())

        return await self.metadata.write(revoke)

    # -- authentication --------------------------------------------------------------------
    async def authenticate(self, name: str, secret: str) -> Principal | None:
        """A password or a personal access token of `name`; None when they do not match."""
        token = TOKEN_PATTERN.fullmatch(secret)
        if token is not None:
            return await self._authenticate_token(name, token[1], token[2])
        row = await self.metadata.read(lambda c: rows.stored_password(c, name))
        stored = row.password_hash if row is not None else dummy_hash(passwords.BCRYPT_ROUNDS)
        matches = await anyio.to_thread.run_sync(verify_password, secret, stored)
        if row is None or row.disabled or not matches:
            return None
        if bcrypt_cost(stored) < passwords.BCRYPT_ROUNDS:
            # Imported (htpasswd) hashes are often cheaper; a cheap hash would also make
            # this account's failures faster than an unknown name's. Upgrade it now.
            upgraded = await anyio.to_thread.run_sync(hash_password, secret)
            await self.metadata.write(lambda c: rows.update_user(c, name, password_hash=upgraded))
        return await self.principal(name)

    async def _authenticate_token(self, name: str, token_id: str, secret: str) -> Principal | None:
        row = await self.metadata.read(lambda c: rows.active_token(c, name, token_id))
        if row is None or not hmac.compare_digest(row.secret_hash, _secret_hash(secret)):
            return None
        now = time.time()
        if row.last_used_at is None or now - row.last_used_at > LAST_USED_RESOLUTION:
            await self.metadata.write(lambda c: rows.touch_token(c, token_id, now))
        return await self.principal(name, token_id=token_id)

    async def principal(self, name: str, *, token_id: str | None = None) -> Principal | None:
        """What an enabled account may do now (None if it does not exist or is disabled)."""

        def load(connection: Connection) -> Principal | None:
            user = rows.account_state(connection, name)
            if user is None or user.disabled:
                return None
            limit = ALL_ACTIONS
            if token_id is not None:
                scope = rows.token_scope(connection, token_id, user.id)
                if scope is None:
                    return None
                limit = TOKEN_SCOPES[scope]
            namespaces = {name: ALL_ACTIONS}
            for organization, role in rows.memberships(connection, user.id):
                namespaces[organization] = ROLES[role]
            return Principal(
                name=name,
                is_admin=user.is_admin,
                namespaces=namespaces,
                limit=limit,
                credentials_changed_at=user.credentials_changed_at,
                token_id=token_id,
            )

        return await self.metadata.read_cached(("principal", name, token_id), load)

    # -- visibility ------------------------------------------------------------------------
    async def is_public(self, repository: str) -> bool:
        """Whether anyone may pull the repository: its own choice; else, for a mirror, its
        upstream's `public` (default true); else the server's `public_by_default`."""
        public = await self.metadata.read_cached(
            ("public", repository), lambda c: visibility.chosen_public(c, repository)
        )
        if public is not None:
            return public
        upstream = self.mirror_of(repository)
        return upstream.public if upstream is not None else self.public_by_default

    def mirror_of(self, repository: str) -> UpstreamSettings | None:
        """The upstream whose mirror `repository` is (`docker.io/library/alpine`), or None."""
        first, _, rest = repository.partition("/")
        return self.mirrors.upstream(first) if rest else None

    async def open_to(self, principal: Principal, repository: str) -> bool:
        """Whether `principal` may pull `repository` by its visibility alone (rights from
        namespaces come on top): a public one, or a mirror of an upstream that is not
        public, with no visibility of its own, for any signed-in user (docs/proxy.md)."""
        if await self.is_public(repository):
            return True
        if principal.is_anonymous:
            return False
        upstream = self.mirror_of(repository)
        if upstream is None:
            return False
        chosen = await self.metadata.read_cached(
            ("public", repository), lambda c: visibility.chosen_public(c, repository)
        )
        return chosen is None

    def routes(self, name: str) -> list[str]:
        """The repositories a pull of `name` may reach (docs/proxy.md, "Three ways in"):
        `name` itself, and `<upstream>/name` for each upstream (by `ns`, or the default
        upstream) unless `name` already starts with an upstream's name."""
        if self.mirror_of(name) is not None:
            return [name]
        return [name, *(f"{upstream.name}/{name}" for upstream in self.mirrors.upstreams)]

    def visible_mirrors(self, principal: Principal) -> frozenset[str]:
        """The upstreams whose mirrors (without a visibility of their own) `principal` may
        list: the public ones; for a signed-in user, all."""
        return frozenset(
            upstream.name
            for upstream in self.mirrors.upstreams
            if upstream.public or not principal.is_anonymous
        )

    def hidden_mirrors(self, principal: Principal) -> frozenset[str]:
        """The upstreams whose mirrors (without a visibility of their own) `principal` may
        not list."""
        names = frozenset(upstream.name for upstream in self.mirrors.upstreams)
        return names - self.visible_mirrors(principal)

    async def set_public(self, repository: str, public: bool) -> None:
        validate_repository_name(repository)

        def choose(connection: Connection) -> None:
            # Alone against a first push creating the repository's row (metadata/locks.py):
            # neither inserts a row the other just did (a unique violation, a 500).
            locks.hold(connection, repositories=[repository])
            visibility.set_public(connection, repository, public, now=time.time())

        await self.metadata.write(choose)

    # -- browser sessions ------------------------------------------------------------------
    async def start_web_session(
        self, user: str, max_age: float, *, replaces: str | None = None
    ) -> str:
        """Record a signed-in browser session of `user`; returns the id its cookie carries.

        `replaces`: the session the cookie had until now, ended in the same transaction."""
        session_id = secrets.token_urlsafe(32)
        now = time.time()

        def add(connection: Connection) -> None:
            user_id = rows.user_id(connection, user)
            if user_id is None:
                raise AccountError(f"no user named {user!r}")
            # Sign-ins are rare: sweeping everyone's expired sessions here keeps the table small.
            web_sessions.start(
                connection,
                _secret_hash(session_id),
                user_id,
                now=now,
                expired_before=now - max_age,
                replaces=None if replaces is None else _secret_hash(replaces),
            )

        await self.metadata.write(add)
        return session_id

    async def web_session_active(self, user: str, session_id: str) -> bool:
        key = _secret_hash(session_id)
        owner = await self.metadata.read_cached(
            ("web-session", key), lambda c: web_sessions.owner(c, key)
        )
        return owner == user

    async def end_web_session(self, session_id: str) -> None:
        key = _secret_hash(session_id)
        await self.metadata.write(lambda c: web_sessions.end(c, key))


def _release_namespace(connection: Connection, namespace: str, delete_images: bool) -> None:
    """Remove what a deleted account leaves in its namespace, so that whoever takes the name
    next starts with nothing (issue 12, item 10): its repositories (with `delete_images`;
    otherwise repositories with images refuse the deletion), and those without images, which
    still hold blob links (a blob readable by digest) and a visibility; the namespace's and
    its repositories' tag policies; its quota; its open upload sessions' accounting. Garbage
    collection frees the bytes."""
    if not delete_images:
        _refuse_owned_repositories(connection, namespace)
    found = namespaces.repositories_of(connection, namespace)
    for repository_id, name in found:
        # An administrator's action, not a request's: no caller to record (IN_PROCESS).
        remove_repository(connection, repository_id, name, IN_PROCESS)
    namespaces.forget(connection, namespace, [repository_id for repository_id, _ in found])


def _refuse_owned_repositories(connection: Connection, namespace: str) -> None:
    """A namespace's images go only by an explicit choice: refuse while any remain."""
    held = namespaces.repositories_with_images(connection, namespace, limit=4)
    if held:
        shown = ", ".join(held[:3]) + (", …" if len(held) > 3 else "")
        raise AccountError(
            f"{namespace} still owns repositories with images ({shown}); delete them first "
            "or delete with them (cangku user|org del --delete-repositories)"
        )


def _take_namespaces(connection: Connection, names: list[str]) -> None:
    """Alone against every other creation of these names, on all replicas (PostgreSQL; one
    writer on SQLite): users and organizations are two tables sharing one space of names, so
    no unique index stops a user and an organization of one name, and two creations of one
    user would both pass the check below and the second end in a unique violation (a 500)
    instead of "already a user"."""
    locks.hold(connection, namespaces=names)


def _refuse_taken_namespace(connection: Connection, name: str) -> None:
    """Users and organizations share one namespace space."""
    holder = rows.namespace_holder(connection, name)
    if holder is not None:
        raise AccountError(
            f"the name {name!r} is already {'a user' if holder == 'user' else 'an organization'}"
        )


def _secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()
