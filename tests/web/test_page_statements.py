"""The repository and image pages read their tag tables in a bounded number of statements.

Issue 11: the repository page made up to four queries per tag for up to 500 tags. These
tests count the SQL statements the database is sent and fail when the count grows with the
number of tags (or images).
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from sqlalchemy import event

from cangku.metadata import browse as metadata_browse
from cangku.registry import Registry
from cangku.registry.browse import UsageCache
from cangku.registry.context import IN_PROCESS, RequestContext
from cangku.web import repositories as repositories_page
from tests.web.test_page_content import (
    OCI_INDEX,
    OCI_MANIFEST,
    push_image,
    site,  # noqa: F401  (the fixture)
    text_of,
)

MANY_TAGS = 300


@contextmanager
def counted_statements(registry: Registry) -> Iterator[list[str]]:
    """Every SQL statement sent to the metadata database inside the block."""
    sent: list[str] = []

    def record(*arguments: Any) -> None:
        sent.append(str(arguments[2]))  # (connection, cursor, statement, ...)

    engine = registry.metadata.engine
    event.listen(engine, "before_cursor_execute", record)
    try:
        yield sent
    finally:
        event.remove(engine, "before_cursor_execute", record)


async def push_images(registry: Registry, name: str, first: int, count: int) -> list[str]:
    """`count` distinct images tagged `v{n}`, and one index over the first two."""
    digests = []
    for number in range(first, first + count):
        config = json.dumps({"os": "linux", "architecture": "amd64", "n": number}).encode()
        digest, _ = await push_image(registry, name, f"v{number:04d}", config)
        digests.append(digest)
    return digests


async def push_index(registry: Registry, name: str, tag: str, children: list[str]) -> None:
    descriptors = []
    for digest in children:
        stored = await registry.repository(name).manifests.get(digest)
        descriptors.append(
            {
                "mediaType": OCI_MANIFEST,
                "digest": digest,
                "size": stored.size,
                "platform": {"os": "linux", "architecture": "amd64"},
            }
        )
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": descriptors})
    await registry.repository(name).manifests.put(
        tag, index.encode(), OCI_INDEX, RequestContext(caller="jimo")
    )


async def page_statements(registry: Registry, client: httpx.AsyncClient, path: str) -> int:
    with counted_statements(registry) as sent:
        page = await client.get(path)
    assert page.status_code == 200, page.text[-2000:]
    return len(sent)


async def test_the_tag_table_is_read_in_two_statements_whatever_the_number_of_tags(
    site: tuple[Registry, httpx.AsyncClient],  # noqa: F811
) -> None:
    registry, _ = site
    digests = await push_images(registry, "jimo/many", 0, MANY_TAGS)
    await push_index(registry, "jimo/many", "multi", digests[:2])
    with counted_statements(registry) as sent:
        table = await registry.tag_table("jimo/many", 500)
    assert len(table.rows) == MANY_TAGS + 1
    assert len(sent) <= 2, sent
    # What the page needs came with them: every image's config size, the index's children.
    assert len(table.blob_sizes) == MANY_TAGS
    assert {row.pushed_by for row in table.rows} == {None, "jimo"}


async def test_the_repository_page_sends_as_many_statements_for_300_tags_as_for_3(
    site: tuple[Registry, httpx.AsyncClient],  # noqa: F811
) -> None:
    registry, client = site
    digests = await push_images(registry, "jimo/many", 0, 3)
    await push_index(registry, "jimo/many", "multi", digests[:2])
    few = await page_statements(registry, client, "/r/jimo/many")

    await push_images(registry, "jimo/many", 3, MANY_TAGS - 3)
    many = await page_statements(registry, client, "/r/jimo/many")
    # Not more with more tags. (It may be fewer: with 4 tags the newest push is the index,
    # whose child the description fallback of issue 17 reads for its annotations.)
    assert many <= few, f"{few} statements for 4 tags, {many} for {MANY_TAGS + 1}"

    # A page of the table at a time; "Next tags" leads through all of them, by name.
    shown: list[str] = []
    path: str | None = "/r/jimo/many"
    pages = 0
    while path is not None:
        page = await client.get(path)
        assert page.status_code == 200
        table = page.text.split("<tbody>")[1].split("</tbody>")[0]
        rows = re.findall(r'data-label="Tag"><a href="[^"]*">([^<]+)</a>', table)
        assert 0 < len(rows) <= repositories_page.TAGS_PER_PAGE
        shown += rows
        assert "linux/amd64" in text_of(page)
        found = re.search(r'<a href="([^"]+)" id="more-tags"', page.text)
        path = html.unescape(found.group(1)) if found else None
        pages += 1
    assert shown == ["multi"] + [f"v{number:04d}" for number in range(MANY_TAGS)]
    assert pages == 4


async def test_a_page_of_tags_after_the_last_one_says_so_and_a_bad_name_is_404(
    site: tuple[Registry, httpx.AsyncClient],  # noqa: F811
) -> None:
    registry, client = site
    await push_images(registry, "jimo/many", 0, 2)
    page = await client.get("/r/jimo/many?tags_after=v0000")
    assert page.status_code == 200
    assert re.findall(r'data-label="Tag"><a href="[^"]*">([^<]+)</a>', page.text) == ["v0001"]
    assert "more-tags" not in page.text and "First tags" in page.text
    past = await client.get("/r/jimo/many?tags_after=v0001")
    assert past.status_code == 200 and "No tags after v0001." in text_of(past)
    assert (await client.get("/r/jimo/many?tags_after=-bad")).status_code == 404


async def test_the_usage_figures_are_reused_for_30_seconds_then_measured_again(
    site: tuple[Registry, httpx.AsyncClient],  # noqa: F811
) -> None:
    """They aggregate the whole repository: the page reads them at most every 30 s."""
    registry, client = site
    now = [1000.0]
    registry.usage_cache = UsageCache(max_age=30.0, clock=lambda: now[0])
    await push_images(registry, "jimo/many", 0, 2)
    aggregate = "count(*) AS manifest_count"
    with counted_statements(registry) as sent:
        assert "2 tags · 2 images" in text_of(await client.get("/r/jimo/many"))
    assert sum(aggregate in statement for statement in sent) == 1
    await push_images(registry, "jimo/many", 2, 1)
    now[0] += 29
    with counted_statements(registry) as sent:
        assert "2 tags · 2 images" in text_of(await client.get("/r/jimo/many"))
    assert not any(aggregate in statement for statement in sent)
    now[0] += 2
    with counted_statements(registry) as sent:
        assert "3 tags · 3 images" in text_of(await client.get("/r/jimo/many"))
    assert sum(aggregate in statement for statement in sent) == 1
    # The JSON usage is always measured now.
    assert (await registry.repository_usage("jimo/many")).tags == 3


async def test_the_image_page_finds_the_tags_on_a_manifest_in_a_bounded_number_of_statements(
    site: tuple[Registry, httpx.AsyncClient],  # noqa: F811
) -> None:
    registry, client = site
    digests = await push_images(registry, "jimo/many", 0, 3)
    few = await page_statements(registry, client, f"/r/jimo/many/-/manifests/{digests[0]}")

    await push_images(registry, "jimo/many", 3, MANY_TAGS - 3)
    many = await page_statements(registry, client, f"/r/jimo/many/-/manifests/{digests[0]}")
    assert many == few, f"{few} statements for 3 tags, {many} for {MANY_TAGS}"
    confirm = await client.get(f"/r/jimo/many/-/manifests/{digests[0]}/delete")
    assert "Its tag v0000." in text_of(confirm)


async def test_the_image_page_of_an_index_reads_its_platforms_in_a_bounded_number_of_statements(
    site: tuple[Registry, httpx.AsyncClient],  # noqa: F811
) -> None:
    registry, client = site
    children = await push_images(registry, "jimo/multi", 0, 40)
    await push_index(registry, "jimo/multi", "two", children[:2])
    await push_index(registry, "jimo/multi", "forty", children)
    two = await page_statements(registry, client, "/r/jimo/multi/-/tags/two")
    forty = await page_statements(registry, client, "/r/jimo/multi/-/tags/forty")
    assert forty == two, f"{two} statements for 2 platforms, {forty} for 40"
    page = text_of(await client.get("/r/jimo/multi/-/tags/forty"))
    assert "All 40 platforms together" in page


async def test_digests_beyond_one_statements_share_are_looked_up_in_more_statements(
    site: tuple[Registry, httpx.AsyncClient],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Databases bound a statement's parameters: a huge index is read in chunks, whole."""
    registry, _ = site
    children = await push_images(registry, "jimo/multi", 0, 7)
    configs = (await registry.tag_table("jimo/multi", 10)).blob_sizes
    monkeypatch.setattr(metadata_browse, "MAX_DIGESTS_PER_STATEMENT", 3)
    with counted_statements(registry) as sent:
        parts = await registry.image_parts("jimo/multi", [*children, "sha256:" + "0" * 64], configs)
    assert sorted(parts.manifests) == sorted(children)
    assert parts.blob_sizes == configs and len(configs) == 7
    assert len(sent) == 5  # 15 digests, 3 at a time


async def test_the_tags_on_a_manifest_are_listed_by_name_up_to_the_limit(
    site: tuple[Registry, httpx.AsyncClient],  # noqa: F811
) -> None:
    registry, _ = site
    digest, _ = await push_image(registry, "jimo/many", "c", b"{}")
    for tag in ("b", "a"):
        await registry.repository("jimo/many").manifests.put(
            tag,
            (await registry.repository("jimo/many").manifests.get(digest)).content,
            OCI_MANIFEST,
            IN_PROCESS,
        )
    await push_images(registry, "jimo/many", 0, 1)
    assert await registry.tags_on("jimo/many", digest, 500) == ["a", "b", "c"]
    assert await registry.tags_on("jimo/many", digest, 2) == ["a", "b"]


async def test_the_image_page_names_the_first_tags_on_it_and_says_there_are_more(
    site: tuple[Registry, httpx.AsyncClient],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    registry, client = site
    digest, _ = await push_image(registry, "jimo/many", "c", b"{}")
    content = (await registry.repository("jimo/many").manifests.get(digest)).content
    for tag in ("b", "a"):
        await registry.repository("jimo/many").manifests.put(tag, content, OCI_MANIFEST, IN_PROCESS)
    monkeypatch.setattr(repositories_page, "MAX_TAGS_ON_IMAGE", 2)
    page = await client.get(f"/r/jimo/many/-/manifests/{digest}")
    assert page.status_code == 200
    tags_line = page.text.split("<dt>Tags</dt>")[1].split("</dd>")[0]
    assert ">a</a>" in tags_line and ">b</a>" in tags_line and ">c</a>" not in tags_line
    assert "and more (the first 2 by name)" in tags_line
    monkeypatch.setattr(repositories_page, "MAX_TAGS_ON_IMAGE", 3)
    page = await client.get(f"/r/jimo/many/-/manifests/{digest}")
    assert "and more" not in page.text.split("<dt>Tags</dt>")[1].split("</dd>")[0]
