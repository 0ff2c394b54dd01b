"""Failed-login limits per account and per client address (in this process).

Each replica counts on its own: an attacker spread over N replicas gets N times the budget,
which still turns a password guess into years. Memory is bounded by evicting the oldest keys.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque


class FailureLimiter:
    def __init__(self, max_failures: int, window: float, max_keys: int = 100_000) -> None:
        self.max_failures = max_failures
        self.window = window
        self.max_keys = max_keys
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def retry_after(self, key: str, now: float | None = None) -> float | None:
        """Seconds until `key` may try again, or None when it may try now."""
        now = time.monotonic() if now is None else now
        failures = self._failures.get(key)
        if failures is None:
            return None
        while failures and failures[0] <= now - self.window:
            failures.popleft()
        if len(failures) < self.max_failures:
            return None
        return failures[0] + self.window - now

    def record_failure(self, key: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        failures = self._failures.setdefault(key, deque())
        failures.append(now)
        self._failures.move_to_end(key)
        while len(failures) > self.max_failures:
            failures.popleft()
        while len(self._failures) > self.max_keys:
            self._failures.popitem(last=False)

    def forget(self, key: str) -> None:
        self._failures.pop(key, None)
