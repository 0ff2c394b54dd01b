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

Recording rows in batches (issue 18): a row written as each session starts cost every
upload start a write transaction (a writer-thread hop and a commit, ~3 ms of the client's
time, and ~0.5 ms of CPU), and most sessions are short: a small blob is POST + PUT, finished
within milliseconds. So `SessionLedger` keeps the sessions this process opened in memory and
writes their rows together, `RECORD_DELAY` seconds later, or at once when they matter:

- a session finished or cancelled before then never gets a row;
- the cap stays exact within the process: a start counts the owner's rows plus the owner's
  sessions whose rows are not committed yet (unrecorded, or being written: until their write
  commits no count sees them), with no wait between that count and taking the new session
  into account; one that would reach the cap, or whose count of rows a write of rows ended
  during, records them first and decides in the same transaction as before (so a refusal is
  always decided by the rows), after the owner's rows being written are committed;
- across processes a row is at most `RECORD_DELAY` late: another process may let the owner
  open up to its own cap meanwhile, never more than that;
- the quota counts the bytes of this process's sessions whose rows are not committed yet
  too (`unrecorded_in`);
- a session's row being written (by a batch, or by a start at the cap) is waited for before
  the session's end deletes it, so that no row outlives its session;
- if the process dies before recording, its sessions are open without a row: they do not
  count against the cap, and expire in storage as always.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass

from cangku.content.errors import Denied, TooManyRequests
from cangku.metadata import Connection, locks
from cangku.metadata import upload_sessions as session_rows
from cangku.metadata.store import MetadataStore
from cangku.registry import usage

log = logging.getLogger("cangku")

DEFAULT_MAX_OPEN_PER_OWNER = 64
# A client refused for holding too many sessions may try again after this long (seconds):
# sessions end as uploads finish, and unused ones expire.
SESSION_RETRY_AFTER = 30
# Seconds a new session's row may wait, to be written with others (or never, if the session
# ends first).
RECORD_DELAY = 1.0


@dataclass(frozen=True, slots=True)
class SessionRow:
    """An `upload_sessions` row not written yet."""

    session: str
    repository: str
    namespace: str
    owner: str | None
    created_at: float


class SessionLedger:
    """The upload sessions this process opened whose rows are not written yet (see above).

    One per metadata store (`for_store`), so that whatever deletes rows of sessions (a
    repository's, a namespace's) can first drop the ones not written yet. Every method runs
    on the event loop; `record`, `settle` and the `drop_*` ones are those that wait."""

    @staticmethod
    def for_store(metadata: MetadataStore) -> SessionLedger:
        ledger = _LEDGERS.get(metadata)
        if ledger is None:
            ledger = _LEDGERS[metadata] = SessionLedger(metadata)
        return ledger

    def __init__(self, metadata: MetadataStore, delay: float = RECORD_DELAY) -> None:
        self.metadata = metadata
        self.delay = delay
        self._unrecorded: dict[str, SessionRow] = {}
        # Sessions per owner, unrecorded or being written: a row counts here until its write
        # has committed, since until then no other transaction sees it.
        self._held: dict[str | None, int] = {}
        # Rows being written now: a session ending must wait for its row before deleting it.
        self._writing: dict[str, tuple[SessionRow, asyncio.Future[None]]] = {}
        # How many writes of rows have ended: a count read across one of them may have missed
        # rows that `held_by` no longer counts (`Uploads.start` then decides by the rows).
        self.writes_ended = 0
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def held_by(self, owner: str | None) -> int:
        """The owner's sessions whose rows no other transaction can see yet."""
        return self._held.get(owner, 0)

    def unrecorded_in(self, namespace: str) -> list[str]:
        """The namespace's sessions whose rows no other transaction can see yet."""
        rows = [*self._unrecorded.values(), *(row for row, _ in self._writing.values())]
        return [row.session for row in rows if row.namespace == namespace]

    def add(self, row: SessionRow) -> None:
        """A session opened; its row is written within `delay` seconds unless it ends first."""
        self._unrecorded[row.session] = row
        self._held[row.owner] = self._held.get(row.owner, 0) + 1
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.delay, self._record_later)

    def take(self, owner: str | None, new: SessionRow) -> Writing:
        """The owner's unrecorded sessions, for the caller to write with `new` (a session
        being opened). Until the caller passes the result to `written` (whether its write
        committed or failed), they count as held, and a session among them that ends waits
        for that write before deleting its row."""
        rows = [row for row in self._unrecorded.values() if row.owner == owner]
        for row in rows:
            del self._unrecorded[row.session]
        # `new` counts as held too: concurrent starts must see it before its row commits.
        self._held[owner] = self._held.get(owner, 0) + 1
        return Writing(rows, new, self._begin(rows))

    async def written_before(self, writing: Writing) -> None:
        """Wait for the other writes of the owner's rows in progress, so that a transaction
        counting the owner's rows afterwards sees them."""
        owner = writing.new.owner
        for row, done in list(self._writing.values()):
            if row.owner == owner and done is not writing.done:
                await asyncio.shield(done)

    def written(self, writing: Writing) -> None:
        """`take`'s write has ended (committed or not)."""
        self._end(writing.rows, writing.done)
        self._release(writing.new.owner)

    async def settle(self, session: str) -> bool:
        """Before a session's row is deleted: False if it has none and never will (it was
        not recorded yet, and now will not be); True once any row being written is there."""
        if session in self._unrecorded:
            self._forget(session)
            return False
        writing = self._writing.get(session)
        if writing is not None:
            await asyncio.shield(writing[1])
        return True

    async def drop_repository(self, repository: str) -> None:
        """The repository's sessions are being deleted with their rows: write none of theirs
        from now on, and wait for any rows being written (so that the deletion sees them)."""
        for row in [row for row in self._unrecorded.values() if row.repository == repository]:
            self._forget(row.session)
        await self._written()

    async def drop_namespace(self, namespace: str) -> None:
        """As `drop_repository`, for a namespace's sessions (its account is being deleted)."""
        for row in [row for row in self._unrecorded.values() if row.namespace == namespace]:
            self._forget(row.session)
        await self._written()

    async def _written(self) -> None:
        for writing in {done for _, done in self._writing.values()}:
            await asyncio.shield(writing)

    async def record(self) -> None:
        """Write every unrecorded session's row now (also when the server stops)."""
        rows = list(self._unrecorded.values())
        if not rows:
            return
        self._unrecorded.clear()
        done = self._begin(rows)
        values = [
            (row.session, row.repository, row.namespace, row.owner, row.created_at) for row in rows
        ]
        try:
            await self.metadata.write(
                lambda connection: session_rows.insert_sessions(connection, values)
            )
        finally:
            self._end(rows, done)

    def _begin(self, rows: list[SessionRow]) -> asyncio.Future[None]:
        """`rows` (no longer in `_unrecorded`, still in `_held`) are being written."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        for row in rows:
            self._writing[row.session] = (row, done)
        return done

    def _end(self, rows: list[SessionRow], done: asyncio.Future[None]) -> None:
        """The write `_begin` announced has committed, or failed: the rows are visible to
        every transaction now, or will never be."""
        self.writes_ended += 1
        for row in rows:
            del self._writing[row.session]  # A row is in one write only (taken from above).
            self._release(row.owner)
        done.set_result(None)

    def _forget(self, session: str) -> None:
        self._release(self._unrecorded.pop(session).owner)

    def _release(self, owner: str | None) -> None:
        left = self._held[owner] - 1
        if left:
            self._held[owner] = left
        else:
            del self._held[owner]

    def _record_later(self) -> None:
        self._timer = None
        task = asyncio.ensure_future(self._record_logged())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _record_logged(self) -> None:
        try:
            await self.record()
        except Exception:
            # The sessions go on without rows (as after a crash): not counted, still expiring.
            log.exception("could not record open upload sessions")


@dataclass(frozen=True, slots=True)
class Writing:
    """Rows `SessionLedger.take` handed to a caller to write, with the session it opens."""

    rows: list[SessionRow]
    new: SessionRow
    done: asyncio.Future[None]


_LEDGERS: weakref.WeakKeyDictionary[MetadataStore, SessionLedger] = weakref.WeakKeyDictionary()


def open_session(
    connection: Connection,
    session: str,
    repository: str,
    owner: str | None,
    limit: int,
    unrecorded: list[SessionRow] | None = None,
) -> TooManyRequests | None:
    """Record a new session (after the owner's `unrecorded` ones, taken from the ledger);
    the refusal instead when `owner` holds `limit` already."""
    if owner is not None:
        # Counted and inserted by one replica at a time, or two could both pass the cap. Taken
        # before any write, as every transaction takes its locks (metadata/locks.py).
        locks.hold(connection, counters=[f"upload-sessions:{owner}"])
    if unrecorded:
        session_rows.insert_sessions(
            connection,
            [(r.session, r.repository, r.namespace, r.owner, r.created_at) for r in unrecorded],
        )
    if owner is not None:
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
