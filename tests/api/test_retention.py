"""Retention policies (issue 17): the rules, the dry run, the real run with GC, the history."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from cangku.content.errors import RequestInvalid
from cangku.metadata.retention import TagFacts
from cangku.registry import Registry
from cangku.registry.gc import CollectionPolicy, GarbageCollector
from cangku.registry.retention import (
    RetainingCollector,
    RetentionPolicy,
    apply_retention,
    judge,
    plan_retention,
    set_retention_policy,
)
from tests.api.helpers import DOCKER_MANIFEST, OCI_MANIFEST, push_image

ACCEPT = {"Accept": f"{OCI_MANIFEST}, {DOCKER_MANIFEST}"}
VERSIONS = [f"1.{minor}.{patch}" for minor in range(5) for patch in range(4)] + [
    f"2.{minor}.{patch}" for minor in range(3) for patch in range(2)
]
DAY = 86400.0


@pytest.fixture
async def versions(client: httpx.AsyncClient) -> dict[str, str]:
    """1.0.0 … 1.4.3 and 2.0.0 … 2.2.1 pushed in order; floating tags follow."""
    digests = {}
    for version in VERSIONS:
        digests[version], _ = await push_image(client, "team/app", version, layers=1)
    return digests


async def tags_of(client: httpx.AsyncClient, name: str) -> set[str]:
    response = await client.get(f"/v2/{name}/tags/list")
    assert response.status_code == 200, response.text
    return set(response.json()["tags"])


async def test_newest_two_patches_per_minor_line_dry_run_then_real_run(
    client: httpx.AsyncClient, registry: Registry, versions: dict[str, str]
) -> None:
    before = await tags_of(client, "team/app")
    await set_retention_policy(
        registry.metadata, "repository", "team/app", RetentionPolicy(keep_patches=2)
    )
    expected = {f"1.{minor}.{patch}" for minor in range(5) for patch in (0, 1)}

    plan = await plan_retention(registry.metadata, "team/app")
    assert {verdict.tag for verdict in plan.deletions} == expected
    reasons = {verdict.tag: verdict.reasons for verdict in plan.deletions}
    assert reasons["1.4.1"] == ["not among the newest 2 of the 1.4 line (#3)"]
    assert await tags_of(client, "team/app") == before  # a dry run deletes nothing

    collector = RetainingCollector(
        GarbageCollector(registry.storage, registry.metadata, CollectionPolicy(grace=0)),
        registry.metadata,
        registry.pulls,
    )
    await collector.collect()
    after = await tags_of(client, "team/app")
    assert after == before - expected
    for floating, version in (
        ("1", "1.4.3"),
        ("1.4", "1.4.3"),
        ("2", "2.2.1"),
        ("latest", "2.2.1"),
    ):
        got = await client.get(f"/v2/team/app/manifests/{floating}", headers=ACCEPT)
        assert got.status_code == 200, floating
        assert got.headers["Docker-Content-Digest"] == versions[version]
    # Each deletion is in the tag history, with the rule.
    history = await registry.repository("team/app").tags.history("1.2.0")
    assert history[0].new_digest is None
    assert history[0].reason == (
        "retention (repository policy): not among the newest 2 of the 1.2 line (#4)"
    )
    # The next run finds nothing more to delete.
    assert (await plan_retention(registry.metadata, "team/app")).deletions == []


async def test_newest_minor_lines_and_floating_targets_are_kept(
    client: httpx.AsyncClient, registry: Registry, versions: dict[str, str]
) -> None:
    await set_retention_policy(
        registry.metadata, "namespace", "team", RetentionPolicy(keep_patches=1, keep_minors=2)
    )
    plan = await apply_retention(registry.metadata, "team/app")
    assert plan.scope == "namespace"
    left = await tags_of(client, "team/app")
    versions_left = {tag for tag in left if tag.count(".") == 2}
    # Newest patch of the newest 2 minor lines of each major, plus what floating tags point
    # at (1.0 → 1.0.3, 1.1 → 1.1.3, 1.2 → 1.2.3, 2.0 → 2.0.1: those lines' newest anyway).
    assert versions_left == {"1.4.3", "1.3.3", "1.2.3", "1.1.3", "1.0.3", "2.2.1", "2.1.1", "2.0.1"}
    assert {"1", "1.0", "1.4", "2", "2.0", "latest"} <= left


async def test_a_repository_policy_overrides_the_namespace_and_server(
    client: httpx.AsyncClient, registry: Registry, versions: dict[str, str]
) -> None:
    await set_retention_policy(registry.metadata, "server", "", RetentionPolicy(keep_patches=1))
    await set_retention_policy(
        registry.metadata, "repository", "team/app", RetentionPolicy(keep_tags=(r"1\..*",))
    )
    plan = await plan_retention(registry.metadata, "team/app")
    assert plan.scope == "repository"
    assert {v.tag for v in plan.deletions} == {"2.0.0", "2.1.0", "2.2.0"}
    await set_retention_policy(registry.metadata, "repository", "team/app", None)
    assert (await plan_retention(registry.metadata, "team/app")).scope == "server"


async def test_no_policy_deletes_nothing(
    client: httpx.AsyncClient, registry: Registry, versions: dict[str, str]
) -> None:
    plan = await apply_retention(registry.metadata, "team/app")
    assert plan.scope is None and plan.deletions == []


def facts(tag: str, pushed_days_ago: float, pulled_days_ago: float | None, now: float) -> TagFacts:
    pulled = None if pulled_days_ago is None else now - pulled_days_ago * DAY
    return TagFacts(tag, f"sha256:{tag:0>64}"[:71], now - pushed_days_ago * DAY, pulled)


def test_pulled_rules_count_a_never_pulled_tag_from_its_push() -> None:
    now = time.time()
    tags = [
        facts("old-unpulled", 100, None, now),
        facts("old-pulled-lately", 100, 1, now),
        facts("new-unpulled", 1, None, now),
        facts("old-pulled-long-ago", 100, 60, now),
    ]
    verdicts = {v.tag: v for v in judge(RetentionPolicy(keep_pulled_within=30 * DAY), tags, now)}
    assert {tag for tag, v in verdicts.items() if not v.keep} == {
        "old-unpulled",
        "old-pulled-long-ago",
    }
    assert verdicts["new-unpulled"].reasons == ["never pulled, pushed 1d ago, within 4w2d"]
    ranked = {v.tag: v for v in judge(RetentionPolicy(keep_pulled=2), tags, now)}
    assert {tag for tag, v in ranked.items() if v.keep} == {"old-pulled-lately", "new-unpulled"}
    pushed = {
        v.tag: v for v in judge(RetentionPolicy(keep_pushed=1, keep_tags=("old-p.*",)), tags, now)
    }
    assert {tag for tag, v in pushed.items() if not v.keep} == {"old-unpulled"}


async def test_pulls_by_digest_keep_a_tag(client: httpx.AsyncClient, registry: Registry) -> None:
    digest, _ = await push_image(client, "team/old", "build-1", layers=1)
    await push_image(client, "team/old", "build-2", layers=1)
    await set_retention_policy(
        registry.metadata, "repository", "team/old", RetentionPolicy(keep_pulled=1)
    )
    # build-2 is newer by push; a pull by digest makes build-1 the most recently pulled.
    time.sleep(0.01)
    assert (await client.get(f"/v2/team/old/manifests/{digest}", headers=ACCEPT)).is_success
    await registry.pulls.flush()
    plan = await plan_retention(registry.metadata, "team/old")
    assert [v.tag for v in plan.deletions] == ["build-2"]


@pytest.mark.parametrize(
    "document",
    [
        [],
        {"keep_everything": True},
        {"keep_patches": 0},
        {"keep_patches": True},
        {"keep_pushed": "5"},
        {"keep_pulled_within": -1},
        {"keep_tags": "latest"},
        {"keep_tags": ["("]},
        {"keep_tags": ["x" * 201]},
    ],
)
def test_invalid_policies_are_refused(document: Any) -> None:
    with pytest.raises(RequestInvalid):
        RetentionPolicy.from_json(document)
