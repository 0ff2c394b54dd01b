"""What open upload sessions may hold (issue 12, item 13).

A session's bytes live in storage until it is finished, possibly for `uploads.expire` (24 h).
Two bounds keep them from becoming free, unaccounted storage:

- **open sessions per owner**: one row per open session (`upload_sessions`) names who opened
  it (the user, or `address:<ip>` without one); starting one more than
  `uploads.max_open_per_owner` is refused with 429 TOOMANYREQUESTS until one finishes, is
  cancelled or expires;
- **quota**: in a namespace with a quota, the bytes its open sessions hold count as used.
  A chunk that would take usage + parked bytes over the quota is refused (403 DENIED) before
  it is received when its length is known, and as soon as it passes the limit otherwise;
  storage keeps nothing of a refused chunk.

The functions taking a `Connection` run inside the caller's transaction.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterable, AsyncIterator

from cangku.content.errors import Denied, TooManyRequests
from cangku.metadata import Connection, locks
from cangku.metadata import upload_sessions as session_rows
from cangku.registry import usage

DEFAULT_MAX_OPEN_PER_OWNER = 64
# A client refused for holding too many sessions may try again after this long (seconds):
# sessions end as uploads finish, and unused ones expire.
SESSION_RETRY_AFTER = 30


def open_session(
    connection: Connection, session: str, repository: str, owner: str | None, limit: int
) -> TooManyRequests | None:
    """Record a new session; the refusal instead when `owner` holds `limit` already."""
    if owner is not None:
        # Counted and inserted by one replica at a time, or two could both pass the cap.
        locks.hold(connection, counters=[f"upload-sessions:{owner}"])
        held = session_rows.count_owned(connection, owner)
        if held >= limit:
            return TooManyRequests(
                f"{limit} upload sessions are open already; finish or cancel one first "
                "(unused ones expire)",
                retry_after=SESSION_RETRY_AFTER,
                detail={"open_sessions": held, "limit": limit},
            )
    session_rows.insert_session(
        connection, session, repository, usage.namespace_of(repository), owner, time.time()
    )
    return None


def close_sessions(connection: Connection, sessions: list[str]) -> None:
    session_rows.delete_sessions(connection, sessions)


def close_repository_sessions(connection: Connection, repository: str) -> None:
    session_rows.delete_repository_sessions(connection, repository)


def forget_vanished(connection: Connection, live: set[str], older_than: float) -> None:
    """Rows of sessions storage no longer has (a crash between the two), once they are older
    than `older_than` (so a session being opened right now is never among them)."""
    stale = session_rows.older_than(connection, older_than)
    close_sessions(connection, [session for session in stale if session not in live])


def quota_state(connection: Connection, namespace: str) -> tuple[int, list[str]]:
    """The namespace's usage in bytes, and its open upload sessions."""
    sessions = session_rows.of_namespace(connection, namespace)
    return usage.namespace_usage(connection, namespace), sessions


async def bounded(
    body: AsyncIterable[bytes], allowance: int, refusal: Denied
) -> AsyncIterator[bytes]:
    """`body`, raising `refusal` as soon as it passes `allowance` bytes (a chunk of unknown
    length: the storage driver then keeps none of it)."""
    received = 0
    async for chunk in body:
        received += len(chunk)
        if received > allowance:
            raise refusal
        yield chunk
