"""The OCI distribution-spec conformance workflows (pull, push, content discovery, content
management), written from the spec text: the same requests and status codes the official
suite uses, including its data shapes (tab-indented JSON, unknown fields, nulls, `data`).

Each runs four ways, as the suite is run against a registry: without authentication
(`--open`), and with token authentication by a client that follows each 401's challenge as
the suite's HTTP client does (keep the token, on 401 fetch one for the challenge's scope,
retry); each with automatic cross-mounting off and on (`OCI_AUTOMATIC_CROSSMOUNT=1`).
"""

from __future__ import annotations

import base64
import json
import os
import re
from collections.abc import AsyncIterator, Generator
from pathlib import Path
from typing import Any

import httpx
import pytest

from cangku.app import create_app
from cangku.auth import passwords
from cangku.auth.accounts import Accounts
from cangku.config import Settings
from cangku.registry import Registry
from tests.api.helpers import OCI_INDEX, OCI_MANIFEST, error_code, sha256

NS = "conformance/test-repo"
XNS = "conformance-crossmount"
LAYER_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"
CONFIG_TYPE = "application/vnd.oci.image.config.v1+json"
EMPTY_TYPE = "application/vnd.oci.empty.v1+json"
DUMMY = sha256(b"hello world")


def go_json(document: Any) -> bytes:
    return json.dumps(document, indent="\t").encode()


def config_blob() -> bytes:
    author = base64.b64encode(os.urandom(12)).decode()
    return go_json(
        {
            "author": author,
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": []},
        }
    )


def image(
    config: bytes, layer: bytes, *, with_media_type: bool = True, layers: bool = True
) -> bytes:
    document: dict[str, Any] = {"schemaVersion": 2}
    if with_media_type:
        document["mediaType"] = OCI_MANIFEST
    document["config"] = {
        "mediaType": CONFIG_TYPE,
        "digest": sha256(config),
        "size": len(config),
        "data": base64.b64encode(config).decode(),
        "newUnspecifiedField": "aGVsbG8gd29ybGQ=",
    }
    document["layers"] = (
        [
            {
                "mediaType": LAYER_TYPE,
                "digest": sha256(layer),
                "size": len(layer),
                "newUnspecifiedField": None,
            }
        ]
        if layers
        else []
    )
    return go_json(document)


async def upload(client: httpx.AsyncClient, name: str, data: bytes) -> None:
    started = await client.post(f"/v2/{name}/blobs/uploads/")
    response = await client.put(
        started.headers["Location"],
        params={"digest": sha256(data)},
        content=data,
        headers={"Content-Type": "application/octet-stream"},
    )
    assert response.status_code == 201


async def put(
    client: httpx.AsyncClient, reference: str, content: bytes, media_type: str = OCI_MANIFEST
) -> httpx.Response:
    return await client.put(
        f"/v2/{NS}/manifests/{reference}", content=content, headers={"Content-Type": media_type}
    )


@pytest.fixture
def layer() -> bytes:
    return os.urandom(168)


PASSWORD = "conformance-password"
CHALLENGE_PARAMETER = re.compile(r'(\w+)="([^"]*)"')


class ChallengeFollower(httpx.Auth):
    """A client's side of Docker token auth: keep the last token; on a 401, fetch a token for
    the challenge's realm, service and scope (one `scope` parameter, as sent) and retry."""

    requires_response_body = True

    def __init__(self, user: str, password: str) -> None:
        self.basic = httpx.BasicAuth(user, password)
        self.token: str | None = None
        self.challenges: list[str] = []

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        if self.token:
            request.headers["Authorization"] = f"Bearer {self.token}"
        response = yield request
        if response.status_code != 401:
            return
        header = response.headers["WWW-Authenticate"]
        self.challenges.append(header)
        assert header.startswith("Bearer ")
        challenge = dict(CHALLENGE_PARAMETER.findall(header))
        params = {"service": challenge["service"]}
        if "scope" in challenge:
            params["scope"] = challenge["scope"]
        token_request = httpx.Request("GET", challenge["realm"], params=params)
        token_request.headers["Authorization"] = self.basic._auth_header
        token_response = yield token_request
        assert token_response.status_code == 200, token_response.text
        self.token = token_response.json()["token"]
        request.headers["Authorization"] = f"Bearer {self.token}"
        yield request


@pytest.fixture(params=["open", "token", "open, automatic mount", "token, automatic mount"])
def mode(request: pytest.FixtureRequest) -> str:
    mode: str = request.param
    return mode


@pytest.fixture
def automatic_mount(mode: str, registry: Registry) -> bool:
    registry.automatic_mount = mode.endswith("automatic mount")
    return registry.automatic_mount


@pytest.fixture
async def client(
    mode: str,
    automatic_mount: bool,
    registry: Registry,
    data_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[httpx.AsyncClient]:
    auth: ChallengeFollower | None = None
    if mode.startswith("open"):
        settings = Settings(data=data_dir, auth={"open": True})
    else:
        monkeypatch.setattr(passwords, "BCRYPT_ROUNDS", 4)  # speed only
        settings = Settings(data=data_dir)
        await Accounts(registry.metadata).add_user("conformance", PASSWORD, admin=True)
        auth = ChallengeFollower("conformance", PASSWORD)
    app = create_app(settings, registry)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://registry.test", auth=auth
    ) as client:
        yield client
    if auth is not None:
        assert any(f"repository:{NS}:" in c for c in auth.challenges)  # really followed


async def test_pull_workflow(client: httpx.AsyncClient, layer: bytes) -> None:
    configs = [config_blob(), config_blob()]
    for blob in [*configs, layer]:
        await upload(client, NS, blob)
    manifests = [image(configs[0], layer), image(configs[1], layer)]
    assert (await put(client, "tagtest0", manifests[0])).status_code == 201
    assert (await put(client, sha256(manifests[1]), manifests[1])).status_code == 201

    assert (await client.head(f"/v2/{NS}/blobs/{DUMMY}")).status_code == 404
    head = await client.head(f"/v2/{NS}/blobs/{sha256(configs[0])}")
    assert head.status_code == 200
    assert head.headers["Docker-Content-Digest"] == sha256(configs[0])
    assert (await client.get(f"/v2/{NS}/blobs/{DUMMY}")).status_code == 404
    assert (await client.get(f"/v2/{NS}/blobs/{sha256(configs[0])}")).content == configs[0]
    accept = {"Accept": OCI_MANIFEST}
    for method in ("HEAD", "GET"):
        assert (
            await client.request(method, f"/v2/{NS}/manifests/.INVALID_MANIFEST_NAME")
        ).status_code == 404
        for reference, expected in [
            (sha256(manifests[0]), manifests[0]),
            (sha256(manifests[1]), manifests[1]),
            ("tagtest0", manifests[0]),
        ]:
            response = await client.request(
                method, f"/v2/{NS}/manifests/{reference}", headers=accept
            )
            assert response.status_code == 200
            assert response.headers["Docker-Content-Digest"] == sha256(expected)
    wrong = await client.request(
        "GET",
        f"/v2/{NS}/manifests/sha256:totallywrong",
        content=b"blablabla",
        headers={"Content-Type": OCI_MANIFEST},
    )
    assert wrong.status_code in (400, 404)
    assert error_code(wrong) in ("DIGEST_INVALID", "MANIFEST_UNKNOWN")
    wrong_put = await put(client, "sha256:totallywrong", b"blablabla")
    assert wrong_put.status_code == 400
    assert error_code(wrong_put) in ("DIGEST_INVALID", "MANIFEST_INVALID")

    for manifest in manifests:
        assert (await client.delete(f"/v2/{NS}/manifests/{sha256(manifest)}")).status_code == 202
    for blob in [*configs, layer]:
        assert (await client.delete(f"/v2/{NS}/blobs/{sha256(blob)}")).status_code == 202


async def test_push_workflow(
    client: httpx.AsyncClient, layer: bytes, automatic_mount: bool
) -> None:
    blob_a = os.urandom(42)
    started = await client.post(f"/v2/{NS}/blobs/uploads/")
    patched = await client.patch(started.headers["Location"], content=blob_a)
    assert patched.status_code == 202
    finished = await client.put(patched.headers["Location"], params={"digest": sha256(blob_a)})
    assert finished.status_code == 201
    assert finished.headers["Location"]

    config = config_blob()
    assert (await client.get(f"/v2/{NS}/blobs/{DUMMY}")).status_code == 404
    monolithic = await client.post(
        f"/v2/{NS}/blobs/uploads/", params={"digest": sha256(config)}, content=config
    )
    assert monolithic.status_code == 201
    assert monolithic.headers["Location"]
    assert (await client.get(f"/v2/{NS}/blobs/{sha256(config)}")).status_code == 200
    await upload(client, NS, config)  # a duplicate upload still succeeds
    await upload(client, NS, layer)

    blob_b = os.urandom(42)
    out_of_order = await client.post(f"/v2/{NS}/blobs/uploads/", headers={"Content-Length": "0"})
    response = await client.patch(
        out_of_order.headers["Location"], content=blob_b[22:], headers={"Content-Range": "22-41"}
    )
    assert response.status_code == 416
    session = await client.post(f"/v2/{NS}/blobs/uploads/", headers={"Content-Length": "0"})
    location = session.headers["Location"]
    first = await client.patch(location, content=blob_b[:22], headers={"Content-Range": "0-21"})
    assert (first.status_code, first.headers["Range"]) == (202, "0-21")
    assert (
        await client.patch(location, content=blob_b[:22], headers={"Content-Range": "0-21"})
    ).status_code == 416
    status = await client.get(location)
    assert (status.status_code, status.headers["Range"]) == (204, "0-21")
    assert status.headers["Location"]
    second = await client.patch(
        status.headers["Location"], content=blob_b[22:], headers={"Content-Range": "22-41"}
    )
    assert (second.status_code, second.headers["Range"]) == (202, "0-41")
    assert second.headers["Location"]
    done = await client.put(second.headers["Location"], params={"digest": sha256(blob_b)})
    assert done.status_code == 201
    assert done.headers["Location"]

    no_from = await client.post(f"/v2/{XNS}/blobs/uploads/", params={"mount": DUMMY})
    assert no_from.status_code == 202
    assert no_from.headers["Location"]
    mounted = await client.post(
        f"/v2/{XNS}/blobs/uploads/", params={"mount": sha256(blob_a), "from": NS}
    )
    assert mounted.status_code == 201
    assert mounted.headers["Location"] == f"/v2/{XNS}/blobs/{sha256(blob_a)}"
    if isinstance(client.auth, ChallengeFollower):
        # With tokens, the mount's challenge named its source too (issue 12, item 3).
        challenge = client.auth.challenges[-1]
        assert f'scope="repository:{XNS}:pull,push repository:{NS}:pull"' in challenge
    assert (await client.get(mounted.headers["Location"])).status_code == 200
    # Without `from`: a mount only with automatic cross-mounting on, else a session.
    again = await client.post(f"/v2/{XNS}/blobs/uploads/", params={"mount": sha256(blob_a)})
    assert again.status_code == (201 if automatic_mount else 202)

    assert (await client.get(f"/v2/{NS}/manifests/.INVALID_MANIFEST_NAME")).status_code == 404
    manifest = image(config, layer)
    for tag in ("test0", "test1", "test2", "test3"):
        response = await put(client, tag, manifest)
        assert response.status_code == 201
        assert response.headers["Location"]
    empty_layer = image(config, layer, with_media_type=False, layers=False)
    empty_put = await put(client, "emptylayer", empty_layer)
    assert (empty_put.status_code, bool(empty_put.headers["Location"])) == (201, True)
    assert (
        await client.get(f"/v2/{NS}/manifests/{sha256(manifest)}", headers={"Accept": OCI_MANIFEST})
    ).status_code == 200

    assert (await client.delete(f"/v2/{NS}/manifests/{sha256(manifest)}")).status_code == 202
    assert (await client.delete(f"/v2/{NS}/manifests/{sha256(empty_layer)}")).status_code == 202
    assert (await client.get(f"/v2/{NS}/tags/list")).json()["tags"] == []


def artifact(
    subject: bytes,
    *,
    config: tuple[str, bytes],
    layers: list[tuple[str, bytes]],
    annotation: str | None,
    artifact_type: str | None = None,
) -> bytes:
    def desc(media_type: str, data: bytes) -> dict[str, Any]:
        return {
            "mediaType": media_type,
            "digest": sha256(data),
            "size": len(data),
            "newUnspecifiedField": None,
        }

    document: dict[str, Any] = {"schemaVersion": 2, "mediaType": OCI_MANIFEST}
    if artifact_type:
        document["artifactType"] = artifact_type
    document["config"] = desc(*config)
    document["layers"] = [desc(*layer) for layer in layers]
    document["subject"] = desc(OCI_MANIFEST, subject)
    if annotation:
        document["annotations"] = {"org.opencontainers.conformance.test": annotation}
    return go_json(document)


async def test_content_discovery_workflow(client: httpx.AsyncClient, layer: bytes) -> None:
    type_a, type_b = (
        "application/vnd.nhl.peanut.butter.bagel",
        "application/vnd.nba.strawberry.jam.croissant",
    )
    blob_a, blob_b = b"NHL Peanut Butter on my NHL bagel", b"NBA Strawberry Jam on my NBA croissant"
    empty = b"{}"
    assert (
        sha256(empty) == "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
    )
    config2, config4 = config_blob(), config_blob()
    await upload(client, NS, config2)
    await upload(client, NS, layer)
    manifest2 = image(config2, layer)
    for tag in ("test0", "test1", "test2", "test3"):
        assert (await put(client, tag, manifest2)).status_code == 201
    subject = image(config4, layer)
    never_pushed = image(config_blob(), layer)

    await upload(client, NS, empty)
    await upload(client, NS, blob_a)
    a_config = artifact(
        subject, config=(type_a, blob_a), layers=[(EMPTY_TYPE, empty)], annotation="test config a"
    )
    a_layer = artifact(
        subject,
        config=(EMPTY_TYPE, empty),
        layers=[(type_a, blob_a)],
        annotation="test layer a",
        artifact_type=type_a,
    )
    for content in (a_config, a_layer):
        response = await put(client, sha256(content), content)
        assert response.headers["OCI-Subject"] == sha256(subject)
    index = go_json(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "artifactType": "application/vnd.food.stand",
            "manifests": [
                {
                    "mediaType": OCI_MANIFEST,
                    "digest": sha256(c),
                    "size": len(c),
                    "newUnspecifiedField": None,
                }
                for c in (a_config, a_layer)
            ],
            "subject": {"mediaType": OCI_MANIFEST, "digest": sha256(subject), "size": len(subject)},
            "annotations": {"org.opencontainers.conformance.test": "test index"},
        }
    )
    response = await put(client, sha256(index), index, OCI_INDEX)
    assert (response.status_code, response.headers["OCI-Subject"]) == (201, sha256(subject))
    await upload(client, NS, config4)
    await upload(client, NS, layer)
    assert (await put(client, "tagtest0", subject)).status_code == 201
    await upload(client, NS, blob_b)
    b_config = artifact(
        subject, config=(type_b, blob_b), layers=[(EMPTY_TYPE, empty)], annotation="test config b"
    )
    b_layer = artifact(
        subject,
        config=(EMPTY_TYPE, empty),
        layers=[(type_b, blob_b)],
        annotation="test layer b",
        artifact_type=type_b,
    )
    c_layer = artifact(
        never_pushed,
        config=(EMPTY_TYPE, empty),
        layers=[(type_b, blob_b)],
        annotation=None,
        artifact_type=type_b,
    )
    for content, expected_subject in (
        (b_config, subject),
        (b_layer, subject),
        (c_layer, never_pushed),
    ):
        response = await put(client, sha256(content), content)
        assert (response.status_code, response.headers["OCI-Subject"]) == (
            201,
            sha256(expected_subject),
        )

    tags = (await client.get(f"/v2/{NS}/tags/list")).json()["tags"]
    assert tags == ["tagtest0", "test0", "test1", "test2", "test3"]
    assert (await client.get(f"/v2/{NS}/tags/list", params={"n": 2})).json()["tags"] == [
        "tagtest0",
        "test0",
    ]
    page = await client.get(f"/v2/{NS}/tags/list", params={"n": 2, "last": "test0"})
    assert page.json()["tags"] == ["test1", "test2"]

    unknown = await client.get(f"/v2/{NS}/referrers/{DUMMY}")
    assert (unknown.status_code, unknown.headers["Content-Type"]) == (200, OCI_INDEX)
    assert unknown.json()["manifests"] == []
    referrers = await client.get(f"/v2/{NS}/referrers/{sha256(subject)}")
    assert referrers.headers["Content-Type"] == OCI_INDEX
    listed = referrers.json()["manifests"]
    assert sorted(d["digest"] for d in listed) == sorted(
        sha256(c) for c in (a_config, a_layer, index, b_config, b_layer)
    )
    assert sorted(d["annotations"]["org.opencontainers.conformance.test"] for d in listed) == [
        "test config a",
        "test config b",
        "test index",
        "test layer a",
        "test layer b",
    ]
    filtered = await client.get(
        f"/v2/{NS}/referrers/{sha256(subject)}", params={"artifactType": type_a}
    )
    assert filtered.headers["OCI-Filters-Applied"] == "artifactType"
    assert filtered.headers["Content-Type"] == OCI_INDEX
    assert sorted(d["digest"] for d in filtered.json()["manifests"]) == sorted(
        sha256(c) for c in (a_config, a_layer)
    )
    dangling = await client.get(f"/v2/{NS}/referrers/{sha256(never_pushed)}")
    assert dangling.headers["Content-Type"] == OCI_INDEX
    assert [d["digest"] for d in dangling.json()["manifests"]] == [sha256(c_layer)]

    for content in (index, manifest2, subject, a_config, a_layer):
        assert (await client.delete(f"/v2/{NS}/manifests/{sha256(content)}")).status_code == 202
    assert (await client.delete(f"/v2/{NS}/manifests/tagtest0")).status_code in (202, 404)
    for blob in (config2, layer):
        assert (await client.delete(f"/v2/{NS}/blobs/{sha256(blob)}")).status_code == 202


async def test_content_management_workflow(client: httpx.AsyncClient, layer: bytes) -> None:
    config = config_blob()
    await upload(client, NS, config)
    await upload(client, NS, layer)
    manifest = image(config, layer)
    assert (await put(client, "tagtest0", manifest)).status_code == 201
    assert len((await client.get(f"/v2/{NS}/tags/list")).json()["tags"]) == 1

    assert (await client.delete(f"/v2/{NS}/manifests/tagtest0")).status_code == 202
    assert (await client.delete(f"/v2/{NS}/manifests/{sha256(manifest)}")).status_code == 202
    assert (await client.get(f"/v2/{NS}/manifests/{sha256(manifest)}")).status_code == 404
    listing = await client.get(f"/v2/{NS}/tags/list")
    assert (listing.status_code, listing.json()["tags"]) == (200, [])
    assert (await client.delete(f"/v2/{NS}/blobs/{sha256(config)}")).status_code == 202
    assert (await client.delete(f"/v2/{NS}/blobs/{sha256(layer)}")).status_code == 202
    assert (await client.get(f"/v2/{NS}/blobs/{sha256(config)}")).status_code == 404


async def test_the_four_workflows_in_sequence_in_one_namespace_twice(
    client: httpx.AsyncClient, automatic_mount: bool
) -> None:
    """As the suite runs them: one after the other in one namespace, with one layer, each
    meeting what the ones before left behind; then all four again on top of that."""
    layer = os.urandom(168)
    for _ in range(2):
        await test_pull_workflow(client, layer)
        await test_push_workflow(client, layer, automatic_mount)
        await test_content_discovery_workflow(client, layer)
        await test_content_management_workflow(client, layer)
