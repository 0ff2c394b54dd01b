"""Failed-login limits per account and per client address, shared by every replica.

Each failure is a row in the metadata database (`login_failures`), so an attacker spreading
guesses over N replicas behind a load balancer gets the same budget as against one. Keys are
stored as sha256 of the limiter's scope and the key (an account name at an address, or an
address), never the names themselves. Times are Unix seconds (wall clock, shared between
machines; a monotonic clock is per process).
"""

from __future__ import annotations

import hashlib
import time

from cangku.metadata import Connection, MetadataStore
from cangku.metadata import login_failures as rows

# Failures older than this are deleted whenever a failure is recorded: no window may be longer.
LONGEST_WINDOW = 3600.0


class FailureLimiter:
    """At most `max_failures` failures per key within `window` seconds (sliding)."""

    def __init__(
        self, metadata: MetadataStore, scope: str, max_failures: int, window: float
    ) -> None:
        if window > LONGEST_WINDOW:
            raise ValueError(f"a failure window is at most {LONGEST_WINDOW:g} seconds")
        self.metadata = metadata
        self.scope = scope
        self.max_failures = max_failures
        self.window = window

    def _hashed(self, key: str) -> str:
        return hashlib.sha256(f"{self.scope}\0{key}".encode()).hexdigest()

    async def retry_after(self, key: str, now: float | None = None) -> float | None:
        """Seconds until `key` may try again, or None when it may try now."""
        now = time.time() if now is None else now
        hashed, since = self._hashed(key), now - self.window
        count, oldest = await self.metadata.read(
            lambda connection: rows.recent(connection, hashed, since)
        )
        if count < self.max_failures or oldest is None:
            return None
        # The failure that leaves the window first: the count drops below the limit then
        # (the later failures of a flood were refused before they were counted).
        return max(oldest + self.window - now, 0.001)

    async def record_failure(self, key: str, now: float | None = None) -> None:
        now = time.time() if now is None else now
        hashed = self._hashed(key)

        def record(connection: Connection) -> None:
            rows.expire(connection, now - LONGEST_WINDOW)
            rows.add(connection, [hashed], now)

        await self.metadata.write(record)

    async def forget(self, key: str) -> None:
        hashed = self._hashed(key)
        await self.metadata.write(lambda connection: rows.forget(connection, hashed))
