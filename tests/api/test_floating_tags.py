"""Semantic-version floating tags: the registry moves `1.9`, `1` and `latest` itself."""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import tempfile
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cangku.content.versions import LATEST, highest_release, parse_version
from cangku.metadata.store import MetadataStore, sqlite_url
from cangku.registry import Registry
from cangku.registry.context import IN_PROCESS
from cangku.registry.tags import TagPolicy
from cangku.storage.filesystem import FilesystemStorage
from tests.api.helpers import OCI_MANIFEST, push_image
from tests.databases import same_database

REPO = "jimo/my-image"


async def image(client: httpx.AsyncClient, name: str = REPO) -> tuple[str, bytes]:
    """An untagged image, pushed by digest."""
    return await push_image(client, name, layers=1)


async def tag(
    client: httpx.AsyncClient, reference: str, content: bytes, name: str = REPO
) -> httpx.Response:
    return await client.put(
        f"/v2/{name}/manifests/{reference}", content=content, headers={"Content-Type": OCI_MANIFEST}
    )


async def tags_now(client: httpx.AsyncClient, name: str = REPO) -> dict[str, str]:
    listed = (await client.get(f"/v2/{name}/tags/list")).json()["tags"]
    return {
        t: (await client.head(f"/v2/{name}/manifests/{t}")).headers["Docker-Content-Digest"]
        for t in listed
    }


async def test_pushing_only_the_version_moves_minor_major_and_latest(
    client: httpx.AsyncClient,
) -> None:
    digest, content = await image(client)
    assert (await tag(client, "1.9.2", content)).status_code == 201
    assert await tags_now(client) == {"1.9.2": digest, "1.9": digest, "1": digest, "latest": digest}


async def test_push_of_older_patch_does_not_move_latest(client: httpx.AsyncClient) -> None:
    images = {v: await image(client) for v in ("1.9.1", "1.9.2", "2.0.0", "1.9.3")}
    for version, (_, content) in images.items():
        assert (await tag(client, version, content)).status_code == 201
    now = await tags_now(client)
    assert now["1.9"] == now["1"] == images["1.9.3"][0]
    assert now["2.0"] == now["2"] == now["latest"] == images["2.0.0"][0]


async def test_prereleases_never_move_floating_tags(client: httpx.AsyncClient) -> None:
    release, release_content = await image(client)
    _, candidate = await image(client)
    await tag(client, "1.9.2", release_content)
    await tag(client, "1.9.3-rc.1", candidate)
    await tag(client, "2.0.0-beta.1", candidate)
    now = await tags_now(client)
    assert now["1.9"] == now["1"] == now["latest"] == release
    assert "2" not in now and "2.0" not in now


async def test_v_prefixed_versions_move_v_prefixed_floating_tags(client: httpx.AsyncClient) -> None:
    digest, content = await image(client)
    await tag(client, "v1.9.2", content)
    assert await tags_now(client) == {
        "v1.9.2": digest,
        "v1.9": digest,
        "v1": digest,
        "latest": digest,
    }


async def test_deleting_a_version_falls_back_to_the_highest_remaining(
    client: httpx.AsyncClient,
) -> None:
    old, old_content = await image(client)
    new, new_content = await image(client)
    await tag(client, "1.9.2", old_content)
    await tag(client, "1.9.3", new_content)
    assert (await client.delete(f"/v2/{REPO}/manifests/1.9.3")).status_code == 202
    now = await tags_now(client)
    assert now == {"1.9.2": old, "1.9": old, "1": old, "latest": old}
    assert new not in now.values()


async def test_deleting_the_last_release_of_a_line_removes_its_floating_tags(
    client: httpx.AsyncClient,
) -> None:
    one, one_content = await image(client)
    _, two_content = await image(client)
    await tag(client, "1.9.2", one_content)
    await tag(client, "2.0.0", two_content)
    await client.delete(f"/v2/{REPO}/manifests/2.0.0")
    assert await tags_now(client) == {"1.9.2": one, "1.9": one, "1": one, "latest": one}


async def test_deleting_a_manifest_by_digest_moves_its_floating_tags_back(
    client: httpx.AsyncClient,
) -> None:
    old, old_content = await image(client)
    new, new_content = await image(client)
    await tag(client, "1.9.2", old_content)
    await tag(client, "1.9.3", new_content)
    assert (await client.delete(f"/v2/{REPO}/manifests/{new}")).status_code == 202
    assert await tags_now(client) == {"1.9.2": old, "1.9": old, "1": old, "latest": old}


async def test_floating_tag_push_is_allowed_while_its_line_has_no_release(
    client: httpx.AsyncClient,
) -> None:
    digest, content = await image(client)
    assert (await tag(client, "latest", content)).status_code == 201
    assert (await tag(client, "1.9", content)).status_code == 201
    assert await tags_now(client) == {"latest": digest, "1.9": digest}
    # Then a release arrives and the policy takes the tags over.
    release, release_content = await image(client)
    await tag(client, "1.9.0", release_content)
    assert (await tags_now(client))["1.9"] == release


async def test_floating_tag_push_over_the_policy_succeeds_and_the_tag_stops_floating(
    client: httpx.AsyncClient,
) -> None:
    digest, content = await image(client)
    other, other_content = await image(client)
    await tag(client, "1.9.2", content)
    response = await tag(client, "1.9", other_content)
    assert response.status_code == 201
    warning = response.headers["Warning"]
    assert warning.startswith('299 - "tag 1.9 of jimo/my-image is now client-managed')
    assert "1.9.2" in warning and "cangku repo release-tag jimo/my-image 1.9" in warning
    # A newer release moves the other floating tags, not the client-managed one.
    newer, newer_content = await image(client)
    await tag(client, "1.9.3", newer_content)
    assert await tags_now(client) == {
        "1.9.2": digest,
        "1.9.3": newer,
        "1.9": other,
        "1": newer,
        "latest": newer,
    }
    history = (await client.get(f"/api/v1/repositories/{REPO}/tags/1.9/history")).json()
    assert history["history"][0]["reason"] == "pushed; client-managed from now on"
    tree = (await client.get(f"/api/v1/repositories/{REPO}/versions")).json()
    assert tree["majors"][0]["minors"][0]["floating"] == {
        "tag": "1.9",
        "digest": other,
        "follows": None,
        "client_managed": True,
    }
    # Naming the digest the policy would choose changes nothing: no warning, still floating.
    agreeing = await tag(client, "1", newer_content)
    assert agreeing.status_code == 201 and "Warning" not in agreeing.headers
    newest, newest_content = await image(client)
    await tag(client, "1.10.0", newest_content)
    assert (await tags_now(client))["1"] == newest


async def test_backport_ci_pushing_version_then_latest_succeeds_until_released(
    client: httpx.AsyncClient,
) -> None:
    images = {v: await image(client) for v in ("1.9.3", "2.0.0", "1.9.4", "2.0.1", "2.0.2")}
    for version in ("1.9.3", "2.0.0", "1.9.4"):
        assert (await tag(client, version, images[version][1])).status_code == 201
    backport = await tag(client, "latest", images["1.9.4"][1])
    assert backport.status_code == 201 and "client-managed" in backport.headers["Warning"]
    await tag(client, "2.0.1", images["2.0.1"][1])
    now = await tags_now(client)
    assert now["latest"] == now["1.9"] == now["1"] == images["1.9.4"][0]
    assert now["2.0"] == now["2"] == images["2.0.1"][0]
    # Deleting the release it points at leaves it too: the client manages it.
    assert (await client.delete(f"/v2/{REPO}/manifests/1.9.4")).status_code == 202
    assert (await tags_now(client))["latest"] == images["1.9.4"][0]
    released = await client.post(f"/api/v1/repositories/{REPO}/tags/latest/release")
    assert released.status_code == 200
    assert released.json() == {"repository": REPO, "tag": "latest", "follows": "2.0.1"}
    assert (await tags_now(client))["latest"] == images["2.0.1"][0]
    history = (await client.get(f"/api/v1/repositories/{REPO}/tags/latest/history")).json()
    assert history["history"][0]["reason"] == "released; follows 2.0.1"
    await tag(client, "2.0.2", images["2.0.2"][1])
    assert (await tags_now(client))["latest"] == images["2.0.2"][0]


async def test_release_needs_an_existing_floating_tag(client: httpx.AsyncClient) -> None:
    _, content = await image(client)
    await tag(client, "1.9.2", content)
    release = f"/api/v1/repositories/{REPO}/tags/{{}}/release"
    not_floating = await client.post(release.format("1.9.2"))
    assert not_floating.status_code == 400
    assert not_floating.json()["error"]["code"] == "REQUEST_INVALID"
    assert (await client.post(release.format("7"))).status_code == 404
    # Releasing a tag the policy already moves changes nothing.
    agreeing = await client.post(release.format("latest"))
    assert agreeing.json()["follows"] == "1.9.2"


async def test_policy_off_leaves_tags_alone(client: httpx.AsyncClient, registry: Registry) -> None:
    await registry.set_tag_policy("repository", REPO, floating=False)
    digest, content = await image(client)
    _, other = await image(client)
    await tag(client, "1.9.2", content)
    assert await tags_now(client) == {"1.9.2": digest}
    assert (await tag(client, "latest", other)).status_code == 201


async def test_namespace_policy_is_inherited_and_repository_overrides_it(
    client: httpx.AsyncClient, registry: Registry
) -> None:
    await registry.set_tag_policy("namespace", "jimo", floating=False, immutable_versions=True)
    assert await registry.repository("jimo/other").tags.policy() == TagPolicy(
        floating=False, immutable_versions=True
    )
    await registry.set_tag_policy("repository", "jimo/other", floating=True)
    assert await registry.repository("jimo/other").tags.policy() == TagPolicy(
        floating=True, immutable_versions=True
    )
    assert await registry.repository("team/app").tags.policy() == TagPolicy(
        floating=True, immutable_versions=False
    )


async def test_immutable_versions_refuse_a_different_digest(
    client: httpx.AsyncClient, registry: Registry
) -> None:
    await registry.set_tag_policy("repository", REPO, immutable_versions=True)
    digest, content = await image(client)
    _, other = await image(client)
    assert (await tag(client, "1.9.2", content)).status_code == 201
    assert (await tag(client, "1.9.2", content)).status_code == 201  # same digest: fine
    response = await tag(client, "1.9.2", other)
    assert response.status_code == 403
    assert "immutable" in response.json()["errors"][0]["message"]
    assert (await tags_now(client))["1.9.2"] == digest


async def test_repushing_a_version_with_a_new_digest_moves_its_floating_tags(
    client: httpx.AsyncClient,
) -> None:
    _, content = await image(client)
    rebuilt, rebuilt_content = await image(client)
    await tag(client, "1.9.2", content)
    await tag(client, "1.9.2", rebuilt_content)
    assert set((await tags_now(client)).values()) == {rebuilt}


async def test_every_move_is_in_the_tag_history(client: httpx.AsyncClient) -> None:
    first, first_content = await image(client)
    second, second_content = await image(client)
    await tag(client, "1.9.2", first_content)
    await tag(client, "1.9.3", second_content)
    await client.delete(f"/v2/{REPO}/manifests/1.9.3")
    response = await client.get(f"/api/v1/repositories/{REPO}/tags/1.9/history")
    assert response.status_code == 200
    history = [(c["old_digest"], c["new_digest"], c["reason"]) for c in response.json()["history"]]
    assert history == [
        (second, first, "1.9.3 was deleted; follows 1.9.2"),
        (first, second, "follows 1.9.3"),
        (None, first, "follows 1.9.2"),
    ]
    assert all(change["changed_at"] > 0 for change in response.json()["history"])
    pushed = (await client.get(f"/api/v1/repositories/{REPO}/tags/1.9.3/history")).json()["history"]
    assert [c["reason"] for c in pushed] == ["deleted", "pushed"]


async def test_version_tree_groups_major_minor_patch_with_floating_tags(
    client: httpx.AsyncClient,
) -> None:
    images = {v: await image(client) for v in ("1.9.1", "1.9.2", "2.0.0", "2.1.0-rc.1")}
    for version, (_, content) in images.items():
        await tag(client, version, content)
    tree = (await client.get(f"/api/v1/repositories/{REPO}/versions")).json()
    assert tree["policy"] == {"floating": True, "immutable_versions": False}
    assert tree["latest"] == {
        "tag": "latest",
        "digest": images["2.0.0"][0],
        "follows": "2.0.0",
        "client_managed": False,
    }
    assert [m["major"] for m in tree["majors"]] == ["2", "1"]
    two = tree["majors"][0]
    assert two["floating"] == {
        "tag": "2",
        "digest": images["2.0.0"][0],
        "follows": "2.0.0",
        "client_managed": False,
    }
    assert [m["minor"] for m in two["minors"]] == ["2.1", "2.0"]
    assert two["minors"][0]["floating"] is None
    assert two["minors"][0]["versions"][0] == {
        "tag": "2.1.0-rc.1",
        "digest": images["2.1.0-rc.1"][0],
        "prerelease": True,
        "floating_tags": [],
    }
    one = tree["majors"][1]["minors"][0]
    assert [v["tag"] for v in one["versions"]] == ["1.9.2", "1.9.1"]
    assert one["versions"][0]["floating_tags"] == ["1.9", "1"]


async def test_json_api_answers_404_for_unknown_repository(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/repositories/nobody/app/versions")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "NAME_UNKNOWN"


# -- concurrency ----------------------------------------------------------------------------
async def _repository_with_images(
    registry: Registry, data_dir: Path, name: str, count: int
) -> list[tuple[str, bytes]]:
    transport = httpx.ASGITransport(app=_app(registry, data_dir))
    async with httpx.AsyncClient(transport=transport, base_url="http://registry.test") as client:
        return [await image(client, name) for _ in range(count)]


def _app(registry: Registry, data_dir: Path):
    from cangku.app import create_app
    from cangku.config import Settings

    # The test's data directory: the default (./data) would leave a session key in the tree.
    return create_app(Settings(data=data_dir, auth={"open": True}), registry)


async def test_concurrent_pushes_end_with_the_highest_in_every_interleaving(
    registry: Registry, data_dir: Path
) -> None:
    # A second registry on the same database: its own connections and lock, as another
    # process would have; SQLite's BEGIN IMMEDIATE is all that serialises the two.
    other = Registry(
        FilesystemStorage(data_dir), MetadataStore.open(same_database(registry.metadata))
    )
    try:
        for round_number in range(12):
            name = f"jimo/race{round_number}"
            (_, low_content), (high, high_content) = await _repository_with_images(
                registry, data_dir, name, 2
            )
            pushes = [
                (registry, "1.9.2", low_content),
                (other, "1.9.3", high_content),
            ]
            random.shuffle(pushes)

            async def push(
                target: Registry, version: str, content: bytes, name: str = name
            ) -> None:
                await asyncio.sleep(random.random() / 200)
                await target.repository(name).manifests.put(
                    version, content, OCI_MANIFEST, IN_PROCESS
                )

            await asyncio.gather(*(push(*p) for p in pushes))
            for floating in ("1.9", "1", "latest"):
                stored = await registry.repository(name).manifests.get(floating)
                assert stored.digest == high, (round_number, floating)
    finally:
        await other.metadata.close()


# -- property: random pushes and deletes against a reference model ---------------------------
VERSION_POOL = [
    "1.9.1",
    "1.9.2",
    "1.9.2_b1",
    "1.9.3",
    "1.9.3-rc.1",
    "1.10.0",
    "2.0.0",
    "2.0.1-rc.1",
    "v1.9.4",
    "v2.1.0",
    "0.1.0",
]
operations = st.lists(
    st.one_of(
        st.tuples(st.just("push"), st.sampled_from(VERSION_POOL), st.integers(0, 3)),
        st.tuples(st.just("delete"), st.sampled_from(VERSION_POOL), st.just(0)),
    ),
    min_size=1,
    max_size=14,
)
_repository_counter = itertools.count()


def expected_tags(model: dict[str, tuple[str, int]]) -> dict[str, str]:
    """The reference model: every floating tag at the highest release left in its line."""
    ordered = sorted(model.items(), key=lambda item: item[1][1])  # oldest push first
    versions = [parse_version(t) for t, _ in ordered]
    digests = {t: d for t, (d, _) in model.items()}
    expected = dict(digests)
    lines = {
        f for version in versions if version and version.is_release for f in version.floating_tags()
    }
    for line in lines | {LATEST}:
        best = highest_release([v for v in versions if v], line)
        if best is not None:
            expected[line] = digests[best.tag]
    return expected


@pytest.fixture(scope="module")
def shared_data_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="cangku-floating-"))


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(operations)
def test_floating_tags_match_the_reference_model_after_every_step(
    shared_data_dir: Path, steps: list[tuple[str, str, int]]
) -> None:
    asyncio.run(_check_model(shared_data_dir, steps))


async def _check_model(data_dir: Path, steps: list[tuple[str, str, int]]) -> None:
    registry = Registry(FilesystemStorage(data_dir), MetadataStore.open(sqlite_url(data_dir)))
    name = f"model/repo{next(_repository_counter)}"
    try:
        images = await _repository_with_images(registry, data_dir, name, 4)
        model: dict[str, tuple[str, int]] = {}
        for sequence, (action, version, index) in enumerate(steps):
            if action == "push":
                digest, content = images[index]
                await registry.repository(name).manifests.put(
                    version, content, OCI_MANIFEST, IN_PROCESS
                )
                model[version] = (digest, sequence)
            elif version in model:
                await registry.repository(name).manifests.delete(version, IN_PROCESS)
                del model[version]
            page = await registry.repository(name).tags.list(None, None)
            actual = {
                t: (await registry.repository(name).manifests.get(t)).digest for t in page.items
            }
            assert actual == expected_tags(model), (steps[: sequence + 1], json.dumps(actual))
    finally:
        await registry.metadata.close()


def test_model_helper_sanity() -> None:
    # The model itself: 1.9.3 beats 1.9.2, pre-releases are ignored, v-lines are separate.
    model = {"1.9.2": ("a", 0), "1.9.3": ("b", 1), "2.0.1-rc.1": ("c", 2), "v1.9.4": ("d", 3)}
    assert expected_tags(model) == {
        "1.9.2": "a",
        "1.9.3": "b",
        "2.0.1-rc.1": "c",
        "v1.9.4": "d",
        "1.9": "b",
        "1": "b",
        "v1.9": "d",
        "v1": "d",
        "latest": "d",  # `latest` spans both spellings: v1.9.4 is the highest release
    }
