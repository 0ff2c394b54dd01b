"""Usage over time (issue 17): per UTC day and namespace, the bytes stored, the manifests
pushed and the pulls; drawn by the namespace and admin pages (web/charts.py) and served by
`/api/v1/usage/history` and `/api/v1/namespaces/<namespace>/usage/history`.

- Pulls per day are added with each batch of pull counts (registry/pulls.py).
- Bytes and pushes come from a snapshot every `SNAPSHOT_SECONDS` while the server runs (and
  one at start): the deduplicated bytes of each namespace then (the day's last snapshot is
  the day's figure), and the manifests pushed today and yesterday still stored (a manifest
  deleted the same day is not counted).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from cangku.metadata import Connection, locks, usage_days
from cangku.metadata.store import MetadataStore
from cangku.registry import usage

log = logging.getLogger("cangku")

SNAPSHOT_SECONDS = 3600.0
MAX_DAYS = 366


@dataclass(frozen=True, slots=True)
class DayUsage:
    """One UTC day: bytes stored (None: no snapshot that day), manifests pushed, pulls."""

    day: str
    stored_bytes: int | None
    pushes: int
    pulls: int

    def to_json(self) -> dict[str, object]:
        return {
            "day": self.day,
            "stored_bytes": self.stored_bytes,
            "pushes": self.pushes,
            "pulls": self.pulls,
        }


async def snapshot_usage(metadata: MetadataStore, now: float | None = None) -> None:
    moment = time.time() if now is None else now

    def take(connection: Connection) -> None:
        locks.hold(connection, counters=["usage-days"])  # Rows inserted on first use.
        report = usage.usage_report(connection)
        stored = {ns.namespace: ns.deduplicated_bytes for ns in report.namespaces}
        usage_days.record_snapshot(connection, moment, stored)

    await metadata.write(take)


async def usage_history(
    metadata: MetadataStore, namespace: str | None, days: int, now: float | None = None
) -> list[DayUsage]:
    """The last `days` days (1 to 366), oldest first, every day present (zeros where
    nothing happened); for one namespace, or all added together (None)."""
    days = max(1, min(days, MAX_DAYS))
    moment = time.time() if now is None else now
    wanted = [
        usage_days.day_of(moment - offset * usage_days.DAY_SECONDS)
        for offset in range(days - 1, -1, -1)
    ]
    rows = await metadata.read(
        lambda connection: usage_days.history(connection, wanted[0], namespace)
    )
    by_day: dict[str, list[usage_days.DayRow]] = {}
    for row in rows:
        by_day.setdefault(row.day, []).append(row)
    result = []
    for day in wanted:
        found = by_day.get(day, [])
        stored = [row.stored_bytes for row in found if row.stored_bytes is not None]
        result.append(
            DayUsage(
                day,
                sum(stored) if stored else None,
                sum(row.pushes for row in found),
                sum(row.pulls for row in found),
            )
        )
    return result


async def snapshot_periodically(
    metadata: MetadataStore, interval: float = SNAPSHOT_SECONDS
) -> None:
    """One snapshot now, then every `interval` seconds, until cancelled (the lifespan)."""
    while True:
        try:
            await snapshot_usage(metadata)
        except Exception:
            log.exception("could not record the usage snapshot; retrying in %.0f s", interval)
        await asyncio.sleep(interval)
