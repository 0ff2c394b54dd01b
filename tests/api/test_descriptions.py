"""Repository descriptions and overviews over the JSON API (issue 17)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.api.helpers import OCI_INDEX, OCI_MANIFEST, push_image, sha256


async def put_description(client: httpx.AsyncClient, name: str, document: Any) -> httpx.Response:
    return await client.put(
        f"/api/v1/repositories/{name}/description", content=json.dumps(document).encode()
    )


async def test_owner_sets_and_reads_description_and_overview(client: httpx.AsyncClient) -> None:
    await push_image(client, "team/app", "1")
    response = await put_description(
        client, "team/app", {"description": "  A small web server  ", "overview": "# App\r\n\nHi"}
    )
    assert response.status_code == 200, response.text
    got = (await client.get("/api/v1/repositories/team/app/description")).json()
    assert got["description"] == "A small web server"
    assert got["overview"] == "# App\n\nHi"
    assert got["from"] == "owner"
    # Both unset: back to nothing known.
    assert (
        await put_description(client, "team/app", {"description": "", "overview": None})
    ).is_success
    got = (await client.get("/api/v1/repositories/team/app/description")).json()
    assert (got["description"], got["overview"], got["from"]) == (None, None, None)


async def test_unset_texts_come_from_the_newest_images_annotations(
    client: httpx.AsyncClient,
) -> None:
    await push_image(
        client,
        "team/app",
        "1",
        extra={
            "annotations": {
                "org.opencontainers.image.description": "From the annotations",
                "org.opencontainers.image.source": "https://example.com/src",
                "org.opencontainers.image.url": "javascript:alert(1)",
                "org.opencontainers.image.licenses": "Apache-2.0",
            }
        },
    )
    got = (await client.get("/api/v1/repositories/team/app/description")).json()
    assert got["description"] == "From the annotations"
    assert got["from"] == "image"
    assert got["image"] == {
        "source": "https://example.com/src",
        "url": None,  # only http(s) addresses are offered as links
        "licenses": "Apache-2.0",
    }
    # The owner's text wins.
    await put_description(client, "team/app", {"description": "Ours"})
    got = (await client.get("/api/v1/repositories/team/app/description")).json()
    assert (got["description"], got["from"]) == ("Ours", "owner")


async def test_unset_texts_come_from_config_labels_through_an_index(
    client: httpx.AsyncClient,
) -> None:
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Labels": {"org.opencontainers.image.description": "From a label"}},
        }
    ).encode()
    from tests.api.helpers import OCI_CONFIG, descriptor, push_blob

    await push_blob(client, "team/multi", config)
    image = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": descriptor(OCI_CONFIG, config),
            "layers": [],
        }
    ).encode()
    image_digest = sha256(image)
    put = await client.put(
        f"/v2/team/multi/manifests/{image_digest}",
        content=image,
        headers={"Content-Type": OCI_MANIFEST},
    )
    assert put.status_code == 201, put.text
    index = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {
                    **descriptor(OCI_MANIFEST, image),
                    "platform": {"architecture": "amd64", "os": "linux"},
                }
            ],
        }
    ).encode()
    put = await client.put(
        "/v2/team/multi/manifests/1", content=index, headers={"Content-Type": OCI_INDEX}
    )
    assert put.status_code == 201, put.text
    got = (await client.get("/api/v1/repositories/team/multi/description")).json()
    assert (got["description"], got["from"]) == ("From a label", "image")


@pytest.mark.parametrize(
    "document",
    [
        {"description": "x" * 101},
        {"description": "two\nlines"},
        {"description": 5},
        {"overview": "y" * 25_001},
        {"overview": "bell \x07"},
        {"summary": "unknown key"},
        ["not", "an", "object"],
    ],
)
async def test_invalid_texts_are_refused_and_nothing_changes(
    client: httpx.AsyncClient, document: Any
) -> None:
    await push_image(client, "team/app", "1")
    await put_description(client, "team/app", {"description": "Kept"})
    response = await put_description(client, "team/app", document)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "REQUEST_INVALID"
    got = (await client.get("/api/v1/repositories/team/app/description")).json()
    assert got["description"] == "Kept"


async def test_body_that_is_not_json_or_too_large_is_refused(client: httpx.AsyncClient) -> None:
    await push_image(client, "team/app", "1")
    url = "/api/v1/repositories/team/app/description"
    assert (await client.put(url, content=b"{nope")).status_code == 400
    assert (await client.put(url, content=b"[" * 200_000)).status_code == 400


async def test_description_of_an_unknown_repository_is_name_unknown(
    client: httpx.AsyncClient,
) -> None:
    for response in (
        await client.get("/api/v1/repositories/no/such/description"),
        await put_description(client, "no/such", {"description": "x"}),
    ):
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "NAME_UNKNOWN"
