"""The version tree and a tag's history come in bounded pages (issue 20)."""

from __future__ import annotations

import httpx
import pytest

from cangku.registry import Registry
from cangku.registry.context import IN_PROCESS
from tests.api.helpers import OCI_MANIFEST, push_image

REPO = "jimo/paged"
VERSIONS = "/api/v1/repositories/jimo/paged/versions"
HISTORY = "/api/v1/repositories/jimo/paged/tags/latest/history"


async def put(client: httpx.AsyncClient, tag: str, content: bytes) -> None:
    response = await client.put(
        f"/v2/{REPO}/manifests/{tag}", content=content, headers={"Content-Type": OCI_MANIFEST}
    )
    assert response.status_code == 201, response.text


def tags_in(tree: dict) -> list[str]:
    return [
        version["tag"]
        for major in tree["majors"]
        for minor in major["minors"]
        for version in minor["versions"]
    ]


async def test_the_version_tree_pages_highest_first(client: httpx.AsyncClient) -> None:
    first, content = await push_image(client, REPO, layers=1)
    second, other = await push_image(client, REPO, layers=1)
    for tag in ("1.0.0", "1.1.0", "2.0.0-rc.1", "v1.2.0"):
        await put(client, tag, content)
    await put(client, "2.0.0", other)
    pages, last = [], None
    while True:
        params = {"n": "2"} | ({"last": last} if last else {})
        response = await client.get(VERSIONS, params=params)
        assert response.status_code == 200, response.text
        pages.append(response.json())
        last = pages[-1]["next_last"]
        if last is None:
            break
    assert [tags_in(page) for page in pages] == [
        ["2.0.0", "2.0.0-rc.1"],
        ["v1.2.0", "1.1.0"],
        ["1.0.0"],
    ]
    # Each page carries the floating tags of its own lines.
    assert pages[0]["latest"] == {
        "tag": "latest",
        "digest": second,
        "follows": "2.0.0",
        "client_managed": False,
    }
    major = pages[1]["majors"][0]
    assert major["major"] == "v1"
    assert major["floating"] == {
        "tag": "v1",
        "digest": first,
        "follows": "v1.2.0",
        "client_managed": False,
    }
    one = pages[1]["majors"][1]["minors"][0]
    assert one["minor"] == "1.1" and one["versions"][0]["floating_tags"] == ["1.1", "1"]
    whole = (await client.get(VERSIONS)).json()
    assert tags_in(whole) == ["2.0.0", "2.0.0-rc.1", "v1.2.0", "1.1.0", "1.0.0"]
    assert whole["next_last"] is None


async def test_a_tags_history_pages_newest_first(client: httpx.AsyncClient) -> None:
    contents = [(await push_image(client, REPO, layers=1))[1] for _ in range(3)]
    for index, content in enumerate(contents):
        await put(client, f"1.{index}.0", content)
    first = (await client.get(HISTORY, params={"n": "2"})).json()
    assert [change["reason"] for change in first["history"]] == ["follows 1.2.0", "follows 1.1.0"]
    rest = (await client.get(HISTORY, params={"n": "2", "before": first["next_before"]})).json()
    assert [change["reason"] for change in rest["history"]] == ["follows 1.0.0"]
    assert rest["next_before"] is None
    whole = (await client.get(HISTORY)).json()
    assert whole["history"] == first["history"] + rest["history"]


@pytest.mark.parametrize(
    ("path", "params"),
    [
        (VERSIONS, {"n": "0"}),
        (VERSIONS, {"n": "1001"}),
        (VERSIONS, {"n": "ten"}),
        (VERSIONS, {"n": "99999999999999999999"}),
        (VERSIONS, {"last": "stable"}),
        (VERSIONS, {"last": "../1.0.0"}),
        (HISTORY, {"n": "-1"}),
        (HISTORY, {"before": "x"}),
        (HISTORY, {"before": "99999999999999999999"}),
    ],
)
async def test_page_parameters_are_checked(
    client: httpx.AsyncClient, path: str, params: dict[str, str]
) -> None:
    await put(client, "1.0.0", (await push_image(client, REPO, layers=1))[1])
    response = await client.get(path, params=params)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] in ("REQUEST_INVALID", "MANIFEST_INVALID"), error
    assert error["message"]


async def test_the_repository_page_shows_the_highest_hundred_versions(
    client: httpx.AsyncClient, registry: Registry
) -> None:
    _, content = await push_image(client, REPO, layers=1)
    for patch in range(105):
        await registry.repository(REPO).manifests.put(
            f"1.0.{patch}", content, OCI_MANIFEST, IN_PROCESS
        )
    page = await client.get(f"/r/{REPO}")
    assert page.status_code == 200
    # Up to the next heading: the tree holds divs of its own (the latest line).
    tree = page.text.split("<h2>Versions</h2>")[1].split("<h2>")[0]
    assert ">1.0.104</a>" in tree and ">1.0.5</a>" in tree
    assert ">1.0.4</a>" not in tree
    assert "Only the highest 100 versions are shown" in tree
    assert f"/api/v1/repositories/{REPO}/versions?last=1.0.5" in tree
