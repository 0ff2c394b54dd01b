"""Browser session rows: one per signed-in cookie, keyed by sha256 of the session id.

Plain functions over a `Connection`; `auth/accounts.py` hashes the ids and chooses the
transaction. Times are Unix seconds (float).
"""

from __future__ import annotations

from sqlalchemy import bindparam, delete, insert, select
from sqlalchemy.engine import Connection

from cangku.metadata.schema import users, web_sessions

OWNER = (
    select(users.c.name)
    .select_from(web_sessions.join(users, users.c.id == web_sessions.c.user_id))
    .where(web_sessions.c.id == bindparam("key"))
)


def start(
    connection: Connection,
    key: str,
    user_id: int,
    *,
    now: float,
    expired_before: float,
    replaces: str | None = None,
) -> None:
    """Record the session `key` of a user; first delete every session started before
    `expired_before` (anyone's) and the session keyed `replaces`, if given."""
    ended = web_sessions.c.created_at < expired_before
    if replaces is not None:
        ended = ended | (web_sessions.c.id == replaces)
    connection.execute(delete(web_sessions).where(ended))
    connection.execute(insert(web_sessions).values(id=key, user_id=user_id, created_at=now))


def owner(connection: Connection, key: str) -> str | None:
    """The name of the user whose session is keyed `key`, None when it has ended."""
    return connection.scalar(OWNER, {"key": key})


def end(connection: Connection, key: str) -> None:
    connection.execute(delete(web_sessions).where(web_sessions.c.id == key))
