"""Tags list and catalog: lexical order, `n`/`last` pagination, Link headers."""

from __future__ import annotations

import httpx
import pytest

from tests.api.helpers import OCI_MANIFEST, error_code, push_image


async def tag_many(client: httpx.AsyncClient, name: str, tags: list[str]) -> None:
    _, content = await push_image(client, name, tags[0], layers=1)
    for tag in tags[1:]:
        response = await client.put(
            f"/v2/{name}/manifests/{tag}", content=content, headers={"Content-Type": OCI_MANIFEST}
        )
        assert response.status_code == 201


async def follow(client: httpx.AsyncClient, url: str, key: str) -> tuple[list[str], int]:
    items: list[str] = []
    pages = 0
    next_url: str | None = url
    while next_url:
        response = await client.get(next_url)
        assert response.status_code == 200
        items += response.json()[key]
        pages += 1
        link = response.headers.get("Link")
        next_url = link.split(";")[0].strip("<>") if link else None
    return items, pages


async def test_tags_are_listed_in_lexical_order(client: httpx.AsyncClient) -> None:
    await tag_many(client, "jimo/app", ["test1", "tagtest0", "test0", "Z", "1.10", "1.9"])
    response = await client.get("/v2/jimo/app/tags/list")
    assert response.json() == {
        "name": "jimo/app",
        "tags": ["1.10", "1.9", "Z", "tagtest0", "test0", "test1"],
    }
    assert "Link" not in response.headers


async def test_tags_pagination_follows_link_headers(client: httpx.AsyncClient) -> None:
    tags = [f"t{i:03d}" for i in range(25)]
    await tag_many(client, "jimo/app", tags)
    first = await client.get("/v2/jimo/app/tags/list", params={"n": 10})
    assert first.json()["tags"] == tags[:10]
    assert first.headers["Link"] == '</v2/jimo/app/tags/list?n=10&last=t009>; rel="next"'
    listed, pages = await follow(client, "/v2/jimo/app/tags/list?n=10", "tags")
    assert listed == tags
    assert pages == 3


async def test_last_without_n_returns_everything_after_it(client: httpx.AsyncClient) -> None:
    await tag_many(client, "jimo/app", ["a", "b", "c", "d"])
    response = await client.get("/v2/jimo/app/tags/list", params={"last": "b"})
    assert response.json()["tags"] == ["c", "d"]


async def test_n_zero_returns_an_empty_list_without_link(client: httpx.AsyncClient) -> None:
    await tag_many(client, "jimo/app", ["a", "b"])
    response = await client.get("/v2/jimo/app/tags/list", params={"n": 0})
    assert response.status_code == 200
    assert response.json()["tags"] == []
    assert "Link" not in response.headers


@pytest.mark.parametrize("n", ["-1", "ten", "1e3", "99999999999999999999"])
async def test_invalid_n_is_400(client: httpx.AsyncClient, n: str) -> None:
    await tag_many(client, "jimo/app", ["a"])
    response = await client.get("/v2/jimo/app/tags/list", params={"n": n})
    assert response.status_code == 400
    assert error_code(response) == "PAGINATION_NUMBER_INVALID"


async def test_tags_of_unknown_repository_is_404_name_unknown(client: httpx.AsyncClient) -> None:
    response = await client.get("/v2/nobody/app/tags/list")
    assert response.status_code == 404
    assert error_code(response) == "NAME_UNKNOWN"


async def test_catalog_lists_repositories_with_content_paginated(client: httpx.AsyncClient) -> None:
    names = [f"org{i % 3}/app{i:02d}" for i in range(12)]
    for name in names:
        await push_image(client, name, "v1", layers=0)
    await client.post("/v2/started/only/blobs/uploads/")  # no manifest yet: not listed
    listed, pages = await follow(client, "/v2/_catalog?n=5", "repositories")
    assert listed == sorted(names)
    assert pages == 3
