"""What the pull-through cache counts (issue 13 and issue 14's cache metrics).

Two views of the same events, both in memory on the hot path (a few dictionary operations,
no I/O):
- per upstream, for Prometheus (observability.py exports them; never the repository as a
  label): hits, misses, upstream fetch bytes, revalidations, served-stale, evictions;
- per repository, for the pages and for eviction: reads (by manifest digest), hits, misses
  and the last upstream check, added to the pull statistics' batches (registry/pulls.py:
  written every 10 s, never a write per request; metadata/proxy_cache.py names the kinds).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from cangku.metadata.proxy_cache import CHECKED, HIT, MISS, READ
from cangku.registry.pulls import PullCounter


@dataclass(slots=True)
class UpstreamCounts:
    """Counters of one upstream since the process started."""

    hits: int = 0
    misses: int = 0
    fetched_bytes: int = 0
    revalidations: int = 0
    served_stale: int = 0
    evicted_manifests: int = 0


@dataclass(slots=True)
class CacheStats:
    """The cache's counters. `pulls` carries the per-repository counts to the database."""

    pulls: PullCounter
    upstreams: dict[str, UpstreamCounts] = field(default_factory=dict)
    # Revalidations by (upstream, outcome): unchanged, moved, new, gone, failed.
    revalidation_outcomes: Counter[tuple[str, str]] = field(default_factory=Counter)

    @classmethod
    def of_upstreams(cls, pulls: PullCounter, names: list[str]) -> CacheStats:
        """Counters for `names` from zero (so every configured upstream is exported)."""
        stats = cls(pulls)
        for name in names:
            stats.upstreams[name] = UpstreamCounts()
        return stats

    def _of(self, upstream: str) -> UpstreamCounts:
        counts = self.upstreams.get(upstream)
        if counts is None:
            counts = self.upstreams[upstream] = UpstreamCounts()
        return counts

    def count(self, upstream: str, repository: str, event: str, outcome: str, size: int) -> None:
        """One event of the manifest path (proxy/cache.py): "hit"; "miss" (with the `size`
        fetched); "checked" (`outcome`: unchanged, which is also a hit; moved, new, gone,
        failed); "stale" (a cached tag served while the upstream failed: also a hit)."""
        if event == "hit":
            self.hit(upstream, repository)
        elif event == "miss":
            self.miss(upstream, repository)
            self.fetched(upstream, size)
        elif event == "checked":
            self.checked(upstream, repository, outcome)
            if outcome == "unchanged":  # served from the cache after the check
                self.hit(upstream, repository)
        elif event == "stale":
            self.stale(upstream)
            self.hit(upstream, repository)
        else:
            raise ValueError(f"unknown cache event {event!r}")

    def read(self, upstream: str, repository: str, digest: str) -> None:
        """A manifest of a mirror repository was served (from the cache or just fetched):
        its last use, which eviction goes by."""
        self.pulls.note(repository, READ, digest)

    def hit(self, upstream: str, repository: str) -> None:
        """A manifest served from the cache without fetching it."""
        self._of(upstream).hits += 1
        self.pulls.note(repository, HIT, "")

    def miss(self, upstream: str, repository: str) -> None:
        """A manifest the cache had to fetch from the upstream."""
        self._of(upstream).misses += 1
        self.pulls.note(repository, MISS, "")

    def checked(self, upstream: str, repository: str, outcome: str) -> None:
        """A tag checked upstream (a manifest HEAD), by outcome."""
        self._of(upstream).revalidations += 1
        self.revalidation_outcomes[(upstream, outcome)] += 1
        self.pulls.note(repository, CHECKED, "")

    def stale(self, upstream: str) -> None:
        """A cached tag served although its upstream could not be asked."""
        self._of(upstream).served_stale += 1

    def fetched(self, upstream: str, size: int) -> None:
        """`size` bytes received from the upstream: a manifest, or a blob once verified."""
        self._of(upstream).fetched_bytes += size

    def evicted(self, upstream: str, manifests: int) -> None:
        self._of(upstream).evicted_manifests += manifests
