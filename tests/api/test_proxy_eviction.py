"""Issue 13: eviction from the pull-through cache by `proxy.evict_after` and
`proxy.max_size`, run before garbage collection (proxy/eviction.py).

Content is put under `docker.io/...` through a registry that does not mirror (a mirror
refuses pushes); the registry under test mirrors `docker.io`, so those repositories are its
cache. Reads go through the mirror's manifest path (served from the cache by digest, the
upstream unreachable), which is what eviction's "last used" counts. The wall clock is the
test's: `time.time` is replaced, so that days pass in a moment.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from sqlalchemy import update
from sqlalchemy.engine import Connection

from cangku.app import build_evictor, create_app
from cangku.config import ProxySettings, Settings
from cangku.content.digest import Digest
from cangku.metadata import proxy_cache
from cangku.metadata.proxy_cache import READ
from cangku.metadata.schema import tags
from cangku.proxy.cache import mirror_wrapper
from cangku.proxy.eviction import EvictingCollector, Evictor, plan_eviction
from cangku.proxy.purge import purge
from cangku.proxy.stats import CacheStats
from cangku.proxy.upstream import Upstream
from cangku.registry import Registry
from cangku.registry.context import RequestContext
from cangku.registry.gc import CollectionPolicy, GarbageCollector
from tests.api.helpers import (
    OCI_INDEX,
    OCI_MANIFEST,
    blob_files,
    descriptor,
    pull_image,
    push_image,
    push_manifest_of,
    put_manifest,
    random_config,
)

DAY = 86400.0
GRACE = 3600.0


class WallClock:
    def __init__(self) -> None:
        self.now = 1_900_000_000.0

    def __call__(self) -> float:
        return self.now


class Refused(httpx.AsyncBaseTransport):
    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("no upstream in these tests", request=request)


@dataclass
class Setup:
    pusher: httpx.AsyncClient  # no mirroring: puts content under docker.io/...
    mirror: httpx.AsyncClient  # the cache, reading what is cached
    registry: Registry
    stats: CacheStats
    clock: WallClock
    data_dir: Path

    def evictor(self, *, max_size: int | None = None, evict_after: float | None = None) -> Evictor:
        proxy = ProxySettings.model_validate(
            {
                "upstreams": [{"name": "docker.io", "url": "http://up.test"}],
                "max_size": max_size,
                "evict_after": evict_after,
            }
        )
        return Evictor(self.registry.metadata, proxy, self.registry.pulls, GRACE, self.stats)

    async def collect(self) -> None:
        policy = CollectionPolicy(grace=GRACE)
        await GarbageCollector(self.registry.storage, self.registry.metadata, policy).collect()

    async def read(self, name: str, digest: str) -> None:
        answer = await self.mirror.get(
            f"/v2/{name}/manifests/{digest}", headers={"Accept": f"{OCI_MANIFEST}, {OCI_INDEX}"}
        )
        assert answer.status_code == 200, answer.text

    async def tags(self, name: str) -> list[str]:
        answer = await self.pusher.get(f"/v2/{name}/tags/list")
        return answer.json()["tags"] or [] if answer.status_code == 200 else []


def _client(app: object) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
    return httpx.AsyncClient(transport=transport, base_url="http://registry.test")


@pytest.fixture
async def setup(
    registry: Registry, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Setup]:
    clock = WallClock()
    monkeypatch.setattr(time, "time", clock)
    proxy = ProxySettings.model_validate(
        {"upstreams": [{"name": "docker.io", "url": "http://up.test"}]}
    )
    mirrored = Registry(registry.storage, registry.metadata)
    mirrored.pulls = registry.pulls  # one process: one buffer of counts
    stats = CacheStats(registry.pulls)
    upstreams = {"docker.io": Upstream(proxy.upstreams[0], Refused())}
    mirrored.wrap = mirror_wrapper(proxy, upstreams, mirrored.core, stats=stats)
    plain = create_app(Settings(data=data_dir, auth={"open": True}), registry)
    cache = create_app(Settings(data=data_dir, auth={"open": True}, proxy=proxy), mirrored)
    async with _client(plain) as pusher, _client(cache) as mirror:
        yield Setup(pusher, mirror, registry, stats, clock, data_dir)


async def test_content_not_read_for_evict_after_goes_and_the_collection_frees_it(
    setup: Setup,
) -> None:
    old, old_content = await push_image(setup.pusher, "docker.io/library/alpine", "3")
    kept, _ = await push_image(setup.pusher, "docker.io/library/busybox", "1")
    local, _ = await push_image(setup.pusher, "jimo/app", "1")  # never read: never evicted
    await setup.read("docker.io/library/alpine", old)
    setup.clock.now += 20 * DAY
    await setup.read("docker.io/library/busybox", kept)
    await setup.registry.pulls.flush()
    setup.clock.now += 5 * DAY
    files_before = blob_files(setup.data_dir)

    report = await setup.evictor(evict_after=10 * DAY).evict()

    assert [(m.repository, m.digest, m.reason) for m in report.manifests] == [
        ("docker.io/library/alpine", old, "evict_after")
    ]
    assert await setup.tags("docker.io/library/alpine") == []
    assert await setup.tags("docker.io/library/busybox") == ["1"]
    history = await setup.registry.repository("docker.io/library/alpine").tags.history("3")
    assert (history[0].old_digest, history[0].new_digest, history[0].actor) == (
        old,
        None,
        "gc:eviction",
    )
    await setup.collect()
    # The evicted image's config and two layers are gone from storage; nothing else.
    gone = files_before - blob_files(setup.data_dir)
    document = json.loads(old_content)
    assert gone == {
        document["config"]["digest"],
        *(layer["digest"] for layer in document["layers"]),
    }
    await pull_image(setup.pusher, "docker.io/library/busybox", "1")
    await pull_image(setup.pusher, "jimo/app", "1")
    assert setup.stats.upstreams["docker.io"].evicted_manifests == 1
    assert local


async def test_max_size_evicts_the_least_recently_read_first(setup: Setup) -> None:
    names = ["docker.io/library/a", "docker.io/library/b", "docker.io/library/c"]
    digests = [(await push_image(setup.pusher, name, "1"))[0] for name in names]
    setup.clock.now += DAY
    for index in (1, 0, 2):  # read order: b, a, c
        await setup.read(names[index], digests[index])
        setup.clock.now += 60
    await setup.registry.pulls.flush()
    setup.clock.now += 2 * GRACE

    dry = await setup.evictor(max_size=0).evict(dry_run=True)
    assert dry.dry_run and len(dry.manifests) == 3
    assert await setup.tags("docker.io/library/b") == ["1"]  # a dry run changes nothing

    sizes = dry.cached_bytes
    each = sizes // 3
    report = await setup.evictor(max_size=sizes - 1).evict()
    assert [m.repository for m in report.manifests] == ["docker.io/library/b"]
    assert report.remaining_bytes <= sizes - 1
    report = await setup.evictor(max_size=each).evict()
    assert [m.repository for m in report.manifests] == ["docker.io/library/a"]
    assert await setup.tags("docker.io/library/c") == ["1"]


async def test_blobs_local_repositories_use_do_not_count_and_are_never_freed(
    setup: Setup,
) -> None:
    config, layer = random_config(), b"shared layer" * 100
    mirrored = await push_manifest_of(setup.pusher, "docker.io/library/a", "1", config, [layer])
    await push_manifest_of(setup.pusher, "jimo/app", "1", random_config(), [layer])
    setup.clock.now += 2 * GRACE
    report = await setup.evictor(max_size=10**9).evict(dry_run=True)
    # The cache holds the manifest and the config: the shared layer is the local image's too.
    manifest = await setup.registry.repository("docker.io/library/a").manifests.get(mirrored)
    assert report.cached_bytes == manifest.size + len(config)
    await setup.evictor(evict_after=GRACE).evict()
    await setup.collect()
    await pull_image(setup.pusher, "jimo/app", "1")
    assert f"sha256:{hashlib.sha256(layer).hexdigest()}" in blob_files(setup.data_dir)


async def test_what_was_read_within_the_grace_period_is_never_evicted(setup: Setup) -> None:
    digest, _ = await push_image(setup.pusher, "docker.io/library/alpine", "3")
    local, _ = await push_image(setup.pusher, "jimo/app", "1")
    setup.clock.now += 30 * DAY
    # Read just now and not yet written to the database (the 10 s batches): still counted.
    await setup.read("docker.io/library/alpine", digest)
    assert setup.registry.pulls.pending_times(READ)
    setup.clock.now += GRACE - 1
    evictor = setup.evictor(max_size=0, evict_after=DAY)
    assert (await evictor.evict()).manifests == []
    assert await setup.tags("docker.io/library/alpine") == ["3"]
    # Once the window has passed, it goes; the local repository never does.
    setup.clock.now += 2
    assert [m.digest for m in (await evictor.evict()).manifests] == [digest]
    assert await setup.tags("jimo/app") == ["1"] and local


async def test_an_index_and_its_images_go_together_and_a_read_image_keeps_the_index(
    setup: Setup,
) -> None:
    name = "docker.io/library/multi"
    children = [
        (await push_image(setup.pusher, name, None, architecture=arch))
        for arch in ("amd64", "arm64")
    ]
    document = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [descriptor(OCI_MANIFEST, content) for _, content in children],
    }
    answer = await put_manifest(setup.pusher, name, "latest", document, OCI_INDEX)
    assert answer.status_code == 201
    setup.clock.now += 30 * DAY
    await setup.read(name, children[1][0])  # a client pulled the arm64 image only
    setup.clock.now += 2 * GRACE
    assert (await setup.evictor(evict_after=2 * DAY).evict()).manifests == []
    setup.clock.now += 3 * DAY
    report = await setup.evictor(evict_after=2 * DAY).evict()
    assert len(report.manifests) == 3  # the index and both images
    assert {m.digest for m in report.manifests} >= {digest for digest, _ in children}


async def test_a_blob_being_streamed_is_read_to_its_end_while_evicted_and_collected(
    setup: Setup,
) -> None:
    _, content = await push_image(setup.pusher, "docker.io/library/alpine", "3")
    layer = json.loads(content)["layers"][0]
    setup.clock.now += 30 * DAY
    # The blob GET has opened its file (storage LocalFile) and sent part of it.
    opened = await setup.registry.storage.open(Digest.parse(layer["digest"]), 0, layer["size"])
    assert opened.__class__.__name__ == "LocalFile"
    first = opened.file.read(100)  # type: ignore[union-attr]
    await setup.evictor(evict_after=DAY).evict()
    await setup.collect()
    assert layer["digest"] not in blob_files(setup.data_dir)  # unlinked...
    rest = opened.file.read()  # type: ignore[union-attr]
    opened.file.close()  # type: ignore[union-attr]
    # ...and the transfer still completes with the right bytes.
    assert f"sha256:{hashlib.sha256(first + rest).hexdigest()}" == layer["digest"]


async def test_the_server_schedule_evicts_before_collecting(setup: Setup, data_dir: Path) -> None:
    digest, _ = await push_image(setup.pusher, "docker.io/library/alpine", "3")
    setup.clock.now += 30 * DAY
    settings = Settings(
        data=data_dir,
        auth={"open": True},
        gc={"grace": "1h"},
        proxy={
            "upstreams": [{"name": "docker.io", "url": "http://up.test"}],
            "evict_after": "7d",
        },
    )
    assert (
        build_evictor(settings.model_copy(update={"proxy": ProxySettings()}), setup.registry)
        is None
    )
    evictor = build_evictor(settings, setup.registry)
    assert evictor is not None
    policy = CollectionPolicy(grace=GRACE)
    collector = EvictingCollector(
        GarbageCollector(setup.registry.storage, setup.registry.metadata, policy), evictor
    )
    report = await collector.collect()
    assert len(report.blobs) == 3  # the evicted image's config and layers, in the same run
    assert await setup.tags("docker.io/library/alpine") == [] and digest


def test_the_plan_with_nothing_cached_evicts_nothing() -> None:
    plan = plan_eviction([], [], [], set(), {}, now=0.0, protect=0.0, evict_after=1.0, max_size=0)
    assert plan.doomed == {} and plan.cached_bytes == 0


async def _two_images(setup: Setup, name: str) -> tuple[str, str]:
    """`old` tagged 3 and latest, unread for 30 days; `new` tagged edge, read just now."""
    old, content = await push_image(setup.pusher, name, "3")
    answer = await setup.pusher.put(
        f"/v2/{name}/manifests/latest", content=content, headers={"Content-Type": OCI_MANIFEST}
    )
    assert answer.status_code == 201
    new, _ = await push_image(setup.pusher, name, "edge")
    setup.clock.now += 30 * DAY
    await setup.read(name, new)
    await setup.registry.pulls.flush()
    setup.clock.now += 2 * GRACE
    return old, new


async def test_a_tag_moved_after_eviction_read_it_is_not_deleted(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = "docker.io/library/alpine"
    old, new = await _two_images(setup, name)
    read_tags = proxy_cache.tags_on

    def tags_on_then_moved(
        connection: Connection, repository_id: int, digests: Sequence[str]
    ) -> dict[str, str]:
        found = read_tags(connection, repository_id, digests)
        # Right after eviction read the tags on what it evicts, `latest` moves to the image
        # kept (as a mirror's revalidation committing meanwhile, which READ COMMITTED shows
        # to eviction's next statement).
        connection.execute(
            update(tags)
            .where(tags.c.repository_id == repository_id, tags.c.name == "latest")
            .values(manifest_digest=new)
        )
        return found

    monkeypatch.setattr(proxy_cache, "tags_on", tags_on_then_moved)
    report = await setup.evictor(evict_after=10 * DAY).evict()

    assert [m.digest for m in report.manifests] == [old]
    assert await setup.tags(name) == ["edge", "latest"]
    answer = await setup.pusher.head(
        f"/v2/{name}/manifests/latest", headers={"Accept": OCI_MANIFEST}
    )
    assert answer.headers["docker-content-digest"] == new
    tag_service = setup.registry.repository(name).tags
    newest = (await tag_service.history("3"))[0]
    assert (newest.old_digest, newest.new_digest, newest.actor) == (old, None, "gc:eviction")
    assert all(h.actor != "gc:eviction" for h in await tag_service.history("latest"))


async def test_two_evictions_at_once_evict_each_unit_once(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    if setup.registry.metadata.is_sqlite:
        pytest.skip("SQLite runs one write at a time: two evictions cannot overlap")
    name = "docker.io/library/alpine"
    old, _ = await _two_images(setup, name)
    read_tags = proxy_cache.tags_on

    def slow_tags_on(
        connection: Connection, repository_id: int, digests: Sequence[str]
    ) -> dict[str, str]:
        found = read_tags(connection, repository_id, digests)
        time.sleep(0.5)  # in the worker thread: the other eviction gets its chance to overlap
        return found

    monkeypatch.setattr(proxy_cache, "tags_on", slow_tags_on)
    first, second = await asyncio.gather(
        setup.evictor(evict_after=10 * DAY).evict(),
        setup.evictor(evict_after=10 * DAY).evict(),
    )
    assert sorted([[m.digest for m in first.manifests], [m.digest for m in second.manifests]]) == [
        [],
        [old],
    ]
    history = await setup.registry.repository(name).tags.history("3")
    assert [h.actor for h in history].count("gc:eviction") == 1


async def test_eviction_and_purge_wait_for_a_collection_in_progress(setup: Setup) -> None:
    if setup.registry.metadata.is_sqlite:
        pytest.skip("SQLite: a collection's steps are writes, one at a time; no collector lock")
    name = "docker.io/library/alpine"
    await _two_images(setup, name)
    proxy = ProxySettings.model_validate(
        {"upstreams": [{"name": "docker.io", "url": "http://up.test"}]}
    )
    context = RequestContext(caller="test")
    async with setup.registry.metadata.collector_lock():  # another replica collecting
        eviction = asyncio.create_task(setup.evictor(evict_after=10 * DAY).evict())
        purging = asyncio.create_task(purge(setup.registry, proxy, name, context))
        await asyncio.sleep(1.0)
        assert not eviction.done() and not purging.done()
        assert await setup.tags(name) == ["3", "edge", "latest"]
    assert (await asyncio.wait_for(purging, 30)) == [name]
    await asyncio.wait_for(eviction, 30)
    assert await setup.tags(name) == []


async def test_a_large_eviction_commits_in_batches_and_keeps_what_is_read_meanwhile(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    names = [f"docker.io/library/image{number}" for number in range(7)]
    digests = [(await push_image(setup.pusher, name, "1"))[0] for name in names]
    local, _ = await push_image(setup.pusher, "jimo/app", "1")
    setup.clock.now += 30 * DAY
    monkeypatch.setattr(
        Evictor, "BATCH", 2, raising=False
    )  # two manifests (two images) per transaction
    metadata = setup.registry.metadata
    write = metadata.write
    batches: list[int] = []

    async def write_then_read(work):
        done = await write(work)
        batches.append(len(done) if isinstance(done, list) else -1)  # -1: not a batch
        if len(batches) == 1:
            # Between two batches a client reads the last image of the plan: it must stay.
            await setup.read(names[-1], digests[-1])
        return done

    monkeypatch.setattr(metadata, "write", write_then_read)
    report = await setup.evictor(evict_after=10 * DAY).evict()
    monkeypatch.setattr(metadata, "write", write)

    assert batches == [2, 2, 2, 0]  # four transactions; the last one's image was read
    assert sorted(m.digest for m in report.manifests) == sorted(digests[:-1])
    for name in names[:-1]:
        assert await setup.tags(name) == []
    assert await setup.tags(names[-1]) == ["1"]
    assert await setup.tags("jimo/app") == ["1"] and local
    await setup.collect()
    await pull_image(setup.pusher, names[-1], "1")  # every blob of the kept image is there


async def test_an_image_an_index_cached_during_the_eviction_lists_is_kept(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = "docker.io/library/multi"
    first, _ = await push_image(setup.pusher, "docker.io/library/a", "1")
    image, content = await push_image(setup.pusher, name, "1")
    setup.clock.now += 30 * DAY
    monkeypatch.setattr(Evictor, "BATCH", 1, raising=False)
    metadata = setup.registry.metadata
    write = metadata.write
    writes = 0

    async def write_then_index(work):
        nonlocal writes
        done = await write(work)
        writes += 1
        if writes == 1:
            # Between two batches an index listing the planned image is cached (as a pull
            # of a multi-platform tag through the mirror would): the image is part of it now.
            document = {
                "schemaVersion": 2,
                "mediaType": OCI_INDEX,
                "manifests": [descriptor(OCI_MANIFEST, content)],
            }
            answer = await put_manifest(setup.pusher, name, "latest", document, OCI_INDEX)
            assert answer.status_code == 201
        return done

    monkeypatch.setattr(metadata, "write", write_then_index)
    report = await setup.evictor(evict_after=10 * DAY).evict()
    monkeypatch.setattr(metadata, "write", write)

    assert [m.digest for m in report.manifests] == [first]
    assert await setup.tags(name) == ["1", "latest"]  # the image and its tag kept
    fetched = await setup.pusher.get(
        f"/v2/{name}/manifests/{image}", headers={"Accept": OCI_MANIFEST}
    )
    assert fetched.status_code == 200
