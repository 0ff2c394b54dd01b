"""Retention policies: which tags to keep; every other tag goes (issue 17, docs/retention.md).

Rules in the manner of Zot's `keepTags`, plus what semantic versions allow. A tag is **kept
when any rule keeps it**:

- `keep_tags`: regular expressions; a tag that one matches in full is kept.
- `keep_pushed` / `keep_pulled`: the N tags most recently pushed / pulled.
- `keep_pushed_within` / `keep_pulled_within`: tags pushed / pulled less than this many
  seconds ago.
- `keep_patches` and `keep_minors` (the version rule): a release version tag is kept when
  it is among the newest `keep_patches` releases of its MAJOR.MINOR line and that line is
  among the newest `keep_minors` minor lines of its major (an unset limit keeps all).

"Pulled" is the newer of the tag's last pull and its digest's (pulls by digest count); a
tag never pulled counts from its push (when it last moved), so a new image is not "stale".

Always kept, whatever the rules: floating tags (`1`, `1.4`, `latest`) and every tag on a
digest that a floating tag points at. Untagged manifests are garbage collection's, as
before (`gc.untagged`). The most specific policy applies: the repository's, else its
namespace's, else the server's; none, or one without rules, deletes nothing.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections import defaultdict
from dataclasses import dataclass, field, fields
from typing import Any

from cangku.content.errors import NameUnknown, RequestInvalid
from cangku.content.names import validate_repository_name
from cangku.content.units import format_duration
from cangku.content.versions import Version, is_floating_tag, parse_version
from cangku.metadata import Connection, locks
from cangku.metadata import retention as rows
from cangku.metadata.retention import TagFacts
from cangku.metadata.store import MetadataStore
from cangku.registry.gc import CollectionReport, Collector
from cangku.registry.pulls import PullCounter

log = logging.getLogger("cangku")

SCOPES = ("repository", "namespace", "server")
MAX_PATTERNS = 50
MAX_PATTERN_LENGTH = 200
MAX_COUNT = 100_000
MAX_SECONDS = 100 * 365 * 86400


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    """The rules of one scope; see the module docstring. Counts are tags, times seconds."""

    keep_tags: tuple[str, ...] = ()
    keep_pushed: int | None = None
    keep_pulled: int | None = None
    keep_pushed_within: float | None = None
    keep_pulled_within: float | None = None
    keep_patches: int | None = None
    keep_minors: int | None = None

    @property
    def has_rules(self) -> bool:
        return any(getattr(self, f.name) not in (None, ()) for f in fields(self))

    def describe(self) -> str:
        """The rules in words, for the CLI and the pages."""
        parts = [f"keep tags matching “{pattern}”" for pattern in self.keep_tags]
        if self.keep_pushed:
            parts.append(f"keep the {self.keep_pushed} most recently pushed")
        if self.keep_pulled:
            parts.append(f"keep the {self.keep_pulled} most recently pulled")
        if self.keep_pushed_within:
            parts.append(f"keep those pushed within {format_duration(self.keep_pushed_within)}")
        if self.keep_pulled_within:
            parts.append(f"keep those pulled within {format_duration(self.keep_pulled_within)}")
        if self.keep_patches or self.keep_minors:
            parts.append(
                f"keep the newest {self.keep_patches or 'all'} releases of each MAJOR.MINOR line"
                + (
                    f" of the newest {self.keep_minors} minor lines of each major"
                    if self.keep_minors
                    else ""
                )
            )
        return "; ".join(parts) or "no rules: nothing is deleted"

    def to_json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)} | {
            "keep_tags": list(self.keep_tags)
        }

    @classmethod
    def from_json(cls, document: object) -> RetentionPolicy:
        """Validate client JSON; RequestInvalid names the first problem."""
        if not isinstance(document, dict):
            raise RequestInvalid("a retention policy is a JSON object")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(document) - known)
        if unknown:
            raise RequestInvalid(f"unknown retention rule {unknown[0][:100]!r}")
        patterns = document.get("keep_tags") or []
        if not isinstance(patterns, list) or len(patterns) > MAX_PATTERNS:
            raise RequestInvalid(f"keep_tags is a list of at most {MAX_PATTERNS} patterns")
        for pattern in patterns:
            if not isinstance(pattern, str) or not 0 < len(pattern) <= MAX_PATTERN_LENGTH:
                raise RequestInvalid(
                    f"each keep_tags pattern is 1 to {MAX_PATTERN_LENGTH} characters"
                )
            try:
                re.compile(pattern)
            except re.error as error:
                raise RequestInvalid(f"keep_tags pattern {pattern!r}: {error}") from None
        values: dict[str, Any] = {"keep_tags": tuple(patterns)}
        for name in ("keep_pushed", "keep_pulled", "keep_patches", "keep_minors"):
            value = document.get(name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_COUNT
            ):
                raise RequestInvalid(f"{name} is a whole number from 1 to {MAX_COUNT}")
            values[name] = value
        for name in ("keep_pushed_within", "keep_pulled_within"):
            value = document.get(name)
            if value is not None and (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not 0 < value <= MAX_SECONDS
            ):
                raise RequestInvalid(f"{name} is a number of seconds above 0")
            values[name] = float(value) if value is not None else None
        return cls(**values)


@dataclass(frozen=True, slots=True)
class Verdict:
    """What a policy says of one tag: kept or deleted, and why (one line per rule)."""

    tag: str
    digest: str
    keep: bool
    reasons: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        return {"tag": self.tag, "digest": self.digest, "keep": self.keep, "reasons": self.reasons}


@dataclass(frozen=True, slots=True)
class RetentionPlan:
    """The verdicts on a repository's tags under the policy of `scope` (None: no policy)."""

    repository: str
    scope: str | None
    policy: RetentionPolicy
    verdicts: list[Verdict]

    @property
    def deletions(self) -> list[Verdict]:
        return [verdict for verdict in self.verdicts if not verdict.keep]

    def to_json(self) -> dict[str, object]:
        return {
            "repository": self.repository,
            "policy_scope": self.scope,
            "policy": self.policy.to_json(),
            "delete": [verdict.to_json() for verdict in self.deletions],
            "keep": [verdict.to_json() for verdict in self.verdicts if verdict.keep],
        }


def judge(policy: RetentionPolicy, facts: list[TagFacts], now: float) -> list[Verdict]:
    """The verdict on every tag (pure: the tags' facts in, the decisions out)."""
    if not policy.has_rules:
        return [Verdict(f.tag, f.digest, True, ["no retention policy"]) for f in facts]
    floating_digests = {f.digest for f in facts if is_floating_tag(f.tag)}
    reasons: dict[str, list[str]] = {f.tag: [] for f in facts}
    kept: set[str] = set()

    def pulled(f: TagFacts) -> float:
        return f.last_pulled_at if f.last_pulled_at is not None else f.pushed_at

    for f in facts:
        if is_floating_tag(f.tag):
            kept.add(f.tag)
            reasons[f.tag].append("a floating tag")
        elif f.digest in floating_digests:
            kept.add(f.tag)
            reasons[f.tag].append("a floating tag points at its image")
    for f in facts:
        matched = next((p for p in policy.keep_tags if re.fullmatch(p, f.tag)), None)
        if matched is not None:
            kept.add(f.tag)
            reasons[f.tag].append(f"matches keep_tags “{matched}”")
        elif policy.keep_tags:
            reasons[f.tag].append("matches no keep_tags pattern")
    for name, count, key in (
        ("pushed", policy.keep_pushed, lambda f: f.pushed_at),
        ("pulled", policy.keep_pulled, pulled),
    ):
        if count is None:
            continue
        ranked = sorted(facts, key=lambda f: (key(f), f.tag), reverse=True)
        for rank, f in enumerate(ranked, start=1):
            if rank <= count:
                kept.add(f.tag)
                reasons[f.tag].append(f"among the {count} most recently {name} (#{rank})")
            else:
                reasons[f.tag].append(f"not among the {count} most recently {name} (#{rank})")
    for name, within, key in (
        ("pushed", policy.keep_pushed_within, lambda f: f.pushed_at),
        ("pulled", policy.keep_pulled_within, pulled),
    ):
        if within is None:
            continue
        for f in facts:
            age = max(0.0, now - key(f))
            never = name == "pulled" and f.last_pulled_at is None
            when = f"{'never pulled, pushed' if never else name} {_about(age)} ago"
            if age < within:
                kept.add(f.tag)
                reasons[f.tag].append(f"{when}, within {format_duration(within)}")
            else:
                reasons[f.tag].append(f"{when}, not within {format_duration(within)}")
    if policy.keep_patches is not None or policy.keep_minors is not None:
        for tag, reason in _version_rule(policy, facts).items():
            if reason[0]:
                kept.add(tag)
            reasons[tag].append(reason[1])
    return [Verdict(f.tag, f.digest, f.tag in kept, reasons[f.tag]) for f in facts]


def _about(seconds: float) -> str:
    """An age for people: whole minutes beyond an hour, whole seconds below."""
    return format_duration(round(seconds / 60) * 60 if seconds >= 3600 else round(seconds))


def _version_rule(policy: RetentionPolicy, facts: list[TagFacts]) -> dict[str, tuple[bool, str]]:
    releases: list[Version] = []
    out: dict[str, tuple[bool, str]] = {}
    for f in facts:
        version = parse_version(f.tag)
        if version is None or not version.is_release:
            if not is_floating_tag(f.tag):
                out[f.tag] = (False, "not a release version: the version rule keeps none")
            continue
        releases.append(version)
    lines: dict[tuple[str, int, int], list[Version]] = defaultdict(list)
    for version in releases:
        lines[(version.prefix, version.major, version.minor)].append(version)
    minors_of_major: dict[tuple[str, int], list[int]] = defaultdict(list)
    for prefix, major, minor in lines:
        minors_of_major[(prefix, major)].append(minor)
    for versions in lines.values():
        versions.sort(reverse=True)
    for (prefix, major), minors in minors_of_major.items():
        minors.sort(reverse=True)
        for minor_rank, minor in enumerate(minors, start=1):
            line = f"{prefix}{major}.{minor}"
            for patch_rank, version in enumerate(lines[(prefix, major, minor)], start=1):
                patch_ok = policy.keep_patches is None or patch_rank <= policy.keep_patches
                minor_ok = policy.keep_minors is None or minor_rank <= policy.keep_minors
                if patch_ok and minor_ok:
                    out[version.tag] = (True, f"version #{patch_rank} of the {line} line")
                elif not patch_ok:
                    out[version.tag] = (
                        False,
                        f"not among the newest {policy.keep_patches} of the {line} line "
                        f"(#{patch_rank})",
                    )
                else:
                    out[version.tag] = (
                        False,
                        f"{line} is not among the newest {policy.keep_minors} minor lines "
                        f"of {prefix}{major} (#{minor_rank})",
                    )
    return out


# -- policies ---------------------------------------------------------------------------------
def policy_keys(repository: str) -> list[tuple[str, str]]:
    """Most specific first: the repository, its namespace, the server."""
    keys = [("repository", repository)]
    if "/" in repository:
        keys.append(("namespace", repository.split("/", 1)[0]))
    keys.append(("server", ""))
    return keys


def effective_policy(connection: Connection, repository: str) -> tuple[str | None, RetentionPolicy]:
    keys = policy_keys(repository)
    stored = rows.policies(connection, keys)
    for key in keys:
        if key in stored:
            return key[0], RetentionPolicy.from_json(json.loads(stored[key]))
    return None, RetentionPolicy()


async def set_retention_policy(
    metadata: MetadataStore, scope: str, name: str, policy: RetentionPolicy | None
) -> None:
    """Store a scope's policy (None removes it). `name` is "" for the server."""
    if scope not in SCOPES:
        raise RequestInvalid(f"scope is one of {', '.join(SCOPES)}")
    if scope == "server":
        name = ""
    elif scope == "repository":
        validate_repository_name(name)
    else:
        validate_repository_name(name)
        if "/" in name:
            raise RequestInvalid("a namespace is the first part of a name, without '/'")
    rules = None if policy is None else json.dumps(policy.to_json(), sort_keys=True)

    def store(connection: Connection) -> None:
        locks.hold(connection, counters=[f"retention-policy:{scope}:{name}"])
        rows.set_policy(connection, scope, name, rules)

    await metadata.write(store)


async def retention_policies(metadata: MetadataStore) -> list[tuple[str, str, RetentionPolicy]]:
    stored = await metadata.read(rows.all_policies)
    return [(s, n, RetentionPolicy.from_json(json.loads(r))) for s, n, r in stored]


# -- plans and runs ---------------------------------------------------------------------------
def _plan(connection: Connection, repository: str, now: float) -> tuple[int, RetentionPlan]:
    repository_id = rows.repository_id(connection, repository)
    if repository_id is None:
        raise NameUnknown("repository name not known to registry", repository)
    scope, policy = effective_policy(connection, repository)
    facts = rows.tag_facts(connection, repository_id)
    return repository_id, RetentionPlan(repository, scope, policy, judge(policy, facts, now))


async def plan_retention(
    metadata: MetadataStore, repository: str, now: float | None = None
) -> RetentionPlan:
    """The dry run: what the policy would delete in `repository` now, and why."""
    validate_repository_name(repository)
    moment = time.time() if now is None else now
    return await metadata.read(lambda connection: _plan(connection, repository, moment)[1])


async def apply_retention(
    metadata: MetadataStore, repository: str, now: float | None = None
) -> RetentionPlan:
    """Delete what the policy does not keep, judged and deleted in one write transaction
    (so a push meanwhile is judged too). Each deletion goes into the tag history as
    "retention (<scope> policy): <why>"."""
    validate_repository_name(repository)
    moment = time.time() if now is None else now

    def run(connection: Connection) -> RetentionPlan:
        locks.hold(connection, repositories=[repository])  # Judged with its pushes, not beside.
        repository_id, plan = _plan(connection, repository, moment)
        for verdict in plan.deletions:
            rows.delete_tag(
                connection,
                repository_id,
                verdict.tag,
                verdict.digest,
                f"retention ({plan.scope} policy): " + "; ".join(verdict.reasons),
            )
        return plan

    return await metadata.write(run)


async def apply_all(metadata: MetadataStore, now: float | None = None) -> list[RetentionPlan]:
    """Every repository with tags, one transaction each (the GC run calls this first)."""
    names = [name for _, name in await metadata.read(rows.repositories_with_tags)]
    plans = []
    for name in names:
        # Judged read-only first: most repositories lose nothing, and need no write.
        if not (await plan_retention(metadata, name, now)).deletions:
            continue
        plan = await apply_retention(metadata, name, now)
        if plan.deletions:
            plans.append(plan)
    return plans


class RetainingCollector:
    """Garbage collection that applies the retention policies first (the server's GC
    schedule): pull counts are flushed, tags the policies do not keep are deleted, then the
    collection runs, which removes untagged manifests as `gc.untagged` says."""

    def __init__(self, collector: Collector, metadata: MetadataStore, pulls: PullCounter) -> None:
        self.collector = collector
        self.metadata = metadata
        self.pulls = pulls

    async def collect(self) -> CollectionReport:
        try:
            await self.pulls.flush()
        except Exception:  # judged on the counts written so far
            log.exception("could not write pull statistics before retention")
        for plan in await apply_all(self.metadata):
            for verdict in plan.deletions:
                log.info(
                    "retention deleted %s:%s (%s)",
                    plan.repository,
                    verdict.tag,
                    "; ".join(verdict.reasons),
                )
        return await self.collector.collect()
