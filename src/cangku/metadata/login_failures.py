"""Rows of `login_failures`: one per failed login still inside its window, by hashed key.

Plain functions over a `Connection`; auth/ratelimit.py holds the rules.
"""

from __future__ import annotations

from sqlalchemy import bindparam, delete, func, insert, select
from sqlalchemy.engine import Connection

from cangku.metadata.schema import login_failures

_RECENT = (
    select(func.count(), func.min(login_failures.c.failed_at))
    .where(login_failures.c.key == bindparam("key"))
    .where(login_failures.c.failed_at > bindparam("since"))
)
_INSERT = insert(login_failures)
_EXPIRE = delete(login_failures).where(login_failures.c.failed_at <= bindparam("since"))
_FORGET = delete(login_failures).where(login_failures.c.key == bindparam("key"))


def recent(connection: Connection, key: str, since: float) -> tuple[int, float | None]:
    """How many failures `key` had after `since` (Unix seconds), and the oldest of them."""
    row = connection.execute(_RECENT, {"key": key, "since": since}).one()
    return int(row[0]), row[1]


def add(connection: Connection, keys: list[str], now: float) -> None:
    connection.execute(_INSERT, [{"key": key, "failed_at": now} for key in keys])


def expire(connection: Connection, since: float) -> None:
    """Every failure at or before `since`, of any key: out of every window."""
    connection.execute(_EXPIRE, {"since": since})


def forget(connection: Connection, key: str) -> None:
    connection.execute(_FORGET, {"key": key})
