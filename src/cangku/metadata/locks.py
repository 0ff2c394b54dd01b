"""Which write transactions wait for which, on PostgreSQL (SQLite has a single writer).

PostgreSQL runs write transactions concurrently, in READ COMMITTED: each statement sees what
was committed when it started. There is no lock that every write takes; a use case whose
rules need it to run alone against *some* other writes holds transaction-scoped advisory
locks (`pg_advisory_xact_lock`, released at COMMIT or ROLLBACK) on exactly those things,
as the first statements of its transaction, so every later statement sees what the
transactions it waited for committed:

- **a repository** — manifest and tag writes (floating-tag moves, immutable versions, the
  tag history) are judged and written one transaction at a time per repository. The key is
  the repository's name, not its row: the first push of a repository creates the row, and
  two replicas doing that at once must also wait for each other.
- **a namespace** — quota checks and the bytes they admit (blob records, manifest rows).
- **a blob digest** — recording a blob (insert its row, or restart its grace period).
- **the blob lifecycle**, shared or exclusive — every transaction that adds a reference to
  stored content (a blob row or link, a manifest, a tag) holds it *shared*, so those run
  side by side; a garbage-collection step that decides what is garbage and deletes it holds
  it *exclusive*. So the rules of docs/garbage-collection.md hold unchanged: a recording
  transaction runs wholly before or wholly after each collection step.
- **a counter** — a named group of rows inserted on first use or counted against a cap
  (pull statistics, usage days, policies, the open upload sessions of one owner).

Locks are always taken in one order — lifecycle, namespaces, repositories, digests,
counters, each group by key — so two transactions never wait for each other in a cycle.
A key is a pair of int4 (kind, 32 bits of sha256 of the name): a collision only makes two
unrelated transactions wait for each other, never lets two conflicting ones through.

PostgreSQL: "Advisory Locks" (§13.3.5) and "Transaction Isolation" (§13.2).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Literal

from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import OperationalError

from cangku.metadata.prepared import Prepared

# The first int4 of every advisory key we take; the second names the thing.
LIFECYCLE = 0x636B0001
NAMESPACE = 0x636B0002
REPOSITORY = 0x636B0003
DIGEST = 0x636B0004
COUNTER = 0x636B0005
COLLECTOR = 0x636B0006  # session-level: one garbage collection at a time (registry/gc.py)

LOCK_NOT_AVAILABLE = "55P03"  # SQLSTATE of a lock_timeout that ran out

# The first statements of every PostgreSQL write transaction: on the driver's cursor.
_EXCLUSIVE = Prepared(text("SELECT pg_advisory_xact_lock(:kind, :key)"))
_SHARED = Prepared(text("SELECT pg_advisory_xact_lock_shared(:kind, :key)"))


def key_of(name: str) -> int:
    """32 bits of sha256 of `name`, as PostgreSQL's signed int4."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "big", signed=True)


def hold(
    connection: Connection,
    *,
    lifecycle: Literal["shared", "exclusive"] | None = None,
    namespaces: Iterable[str] = (),
    repositories: Iterable[str] = (),
    digests: Iterable[str] = (),
    counters: Iterable[str] = (),
) -> None:
    """Wait for, then hold until the transaction ends, the locks named (PostgreSQL only;
    nothing on SQLite, whose writes already run one at a time). Call it first in the
    transaction, once, with everything it needs."""
    if connection.dialect.name != "postgresql":
        return
    if lifecycle is not None:
        statement = _SHARED if lifecycle == "shared" else _EXCLUSIVE
        statement.run(connection, {"kind": LIFECYCLE, "key": 0})
    for kind, names in (
        (NAMESPACE, namespaces),
        (REPOSITORY, repositories),
        (DIGEST, digests),
        (COUNTER, counters),
    ):
        for key in sorted({key_of(name) for name in names}):
            _EXCLUSIVE.run(connection, {"kind": kind, "key": key})


def namespace_of(repository: str) -> str:
    return repository.split("/", 1)[0]


def for_repository_content(connection: Connection, repository: str, *digests: str) -> None:
    """What adding content to `repository` holds: the lifecycle shared, the repository's
    namespace (its quota), the repository, and the digests whose blob rows it writes."""
    hold(
        connection,
        lifecycle="shared",
        namespaces=[namespace_of(repository)],
        repositories=[repository],
        digests=digests,
    )


def wait_for_collector(connection: Connection, seconds: float) -> bool:
    """Wait up to `seconds` for the collector's session-level lock on `connection`; True when
    taken (always at once on SQLite, whose collections serialise on the writer).

    The wait is in PostgreSQL's lock queue, so collectors take turns in the order they
    asked; bounded so that a caller can give up (a server shutting down) between waits."""
    if connection.dialect.name != "postgresql":
        return True
    connection.execute(
        text("SELECT set_config('lock_timeout', :timeout, false)"),
        {"timeout": f"{int(seconds * 1000)}ms"},
    )
    try:
        connection.execute(text("SELECT pg_advisory_lock(:kind, 0)"), {"kind": COLLECTOR})
    except OperationalError as error:
        connection.rollback()
        if getattr(error.orig, "sqlstate", None) == LOCK_NOT_AVAILABLE:
            return False
        raise
    finally:
        connection.execute(text("RESET lock_timeout"))
        connection.commit()  # Session-level: the lock outlives this transaction.
    return True


def release_collector(connection: Connection) -> None:
    if connection.dialect.name != "postgresql":
        return
    connection.execute(text("SELECT pg_advisory_unlock(:kind, 0)"), {"kind": COLLECTOR})
    connection.commit()
