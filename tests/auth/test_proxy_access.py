"""Issue 13: who may pull through an upstream (docs/proxy.md, "Access"). Mirrors follow the
same rules as local repositories: public by default, `public: false` on an upstream for
signed-in users only, a repository's own visibility first. Token auth and Basic apply to
the name the client used, in all three ways in: the prefix path, `?ns=`, and the default
upstream. The upstream is an open cangku in-process."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from cangku.app import create_app, mirror_registry
from cangku.auth.accounts import Accounts
from cangku.config import Settings
from cangku.metadata.store import MetadataStore, sqlite_url
from cangku.proxy.upstream import Upstream
from cangku.registry import Registry
from cangku.storage.filesystem import FilesystemStorage
from tests.api.helpers import OCI_MANIFEST, push_image
from tests.auth.conftest import basic, bearer, token_for

# (the path's name, the query, the name the client uses): the three ways to docker.io's
# library/alpine.
WAYS_IN = [
    ("docker.io/library/alpine", "", "docker.io/library/alpine"),
    ("library/alpine", "?ns=docker.io", "library/alpine"),
    ("library/alpine", "", "library/alpine"),
]


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        data=tmp_path / "data",
        proxy={
            "upstreams": [
                {"name": "docker.io", "url": "http://up.test", "default": True},
                {"name": "ghcr.io", "url": "http://up.test", "public": False},
            ]
        },
    )


@pytest.fixture
async def client(
    settings: Settings,
    registry: Registry,
    accounts: Accounts,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[httpx.AsyncClient]:
    upstream_dir = tmp_path / "upstream"
    upstream_dir.mkdir()
    upstream_metadata = MetadataStore.open(sqlite_url(upstream_dir))
    upstream_app = create_app(
        Settings(data=upstream_dir, auth={"open": True}),
        Registry(FilesystemStorage(upstream_dir), upstream_metadata),
    )
    transport = httpx.ASGITransport(app=upstream_app)
    # The server's own wiring (app.mirror_registry), its upstreams reached in-process.
    original = Upstream.__init__

    def in_process(self: Upstream, *args: object, **kwargs: object) -> None:
        kwargs["transport"] = transport
        original(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Upstream, "__init__", in_process)
    registry.wrap = mirror_registry(settings.proxy, registry)
    async with httpx.AsyncClient(transport=transport, base_url="http://up.test") as upstream:
        await push_image(upstream, "library/alpine", "3")
        await push_image(upstream, "library/busybox", "1")
        await push_image(upstream, "team/tool", "1")
    app = create_app(settings, registry)
    mirror = httpx.ASGITransport(app=app, client=("127.0.0.1", 4321))
    async with httpx.AsyncClient(transport=mirror, base_url="http://registry.test") as client:
        yield client
    await upstream_metadata.close()


async def _get(
    client: httpx.AsyncClient, name: str, query: str = "", headers: dict[str, str] | None = None
) -> httpx.Response:
    return await client.get(
        f"/v2/{name}/manifests/3{query}" if "alpine" in name else f"/v2/{name}/manifests/1{query}",
        headers={"Accept": OCI_MANIFEST, **(headers or {})},
    )


@pytest.mark.parametrize(("name", "query", "used"), WAYS_IN)
async def test_anonymous_pulls_a_public_mirror_with_a_token_for_the_name_it_used(
    client: httpx.AsyncClient, name: str, query: str, used: str
) -> None:
    assert (await _get(client, name, query)).status_code == 200  # public: no token needed
    # docker, containerd and podman fetch a token for the name they use, and send it.
    token = await token_for(client, None, f"repository:{used}:pull")
    answer = await _get(client, name, query, bearer(token))
    assert answer.status_code == 200, answer.text


@pytest.mark.parametrize(("name", "query", "used"), WAYS_IN)
async def test_basic_credentials_pull_a_mirror_all_three_ways(
    client: httpx.AsyncClient, name: str, query: str, used: str
) -> None:
    answer = await _get(client, name, query, basic("jimo"))
    assert answer.status_code == 200, answer.text
    token = await token_for(client, "jimo", f"repository:{used}:pull")
    assert (await _get(client, name, query, bearer(token))).status_code == 200


@pytest.mark.parametrize(
    ("name", "query", "used"),
    [("ghcr.io/team/tool", "", "ghcr.io/team/tool"), ("team/tool", "?ns=ghcr.io", "team/tool")],
)
async def test_an_upstream_that_is_not_public_is_for_signed_in_users(
    client: httpx.AsyncClient, name: str, query: str, used: str
) -> None:
    refused = await _get(client, name, query)
    assert refused.status_code == 401
    # The challenge names what the client asked for: the scope it will request a token for.
    assert f'scope="repository:{used}:pull"' in refused.headers["www-authenticate"]
    anonymous = await token_for(client, None, f"repository:{used}:pull")
    assert (await _get(client, name, query, bearer(anonymous))).status_code == 403
    assert (await _get(client, name, query, basic("lee"))).status_code == 200
    token = await token_for(client, "lee", f"repository:{used}:pull")
    assert (await _get(client, name, query, bearer(token))).status_code == 200


async def test_a_token_for_one_name_opens_no_other_repository(client: httpx.AsyncClient) -> None:
    token = await token_for(client, None, "repository:library/alpine:pull")
    assert (await _get(client, "library/alpine", "?ns=docker.io", bearer(token))).status_code == 200
    # (An anonymous token without the scope is refused, as for local repositories.)
    other = await _get(client, "library/busybox", "?ns=docker.io", bearer(token))
    assert other.status_code == 403


async def test_a_token_claim_widened_for_mirrors_never_opens_a_private_local_repository(
    client: httpx.AsyncClient,
) -> None:
    # jimo/app is pushed here and private: it wins over the default upstream.
    pushed, _ = await push_image(_As(client, basic("jimo")), "jimo/app", "1")
    # An anonymous token for jimo/app may claim pull (docker.io/jimo/app would be a public
    # mirror)...
    token = await token_for(client, None, "repository:jimo/app:pull")
    # ...yet the local repository it reaches is judged on its own.
    for query in ("", "?ns=ghcr.io"):
        answer = await _get(client, "jimo/app", query, bearer(token))
        assert answer.status_code in (401, 403), (query, answer.status_code)
    assert (await _get(client, "jimo/app", "", basic("jimo"))).status_code == 200
    assert pushed


async def test_a_mirrors_own_visibility_comes_first(
    client: httpx.AsyncClient, registry: Registry
) -> None:
    assert (await _get(client, "docker.io/library/alpine", "", basic("jimo"))).status_code == 200
    await Accounts(registry.metadata).set_public("docker.io/library/alpine", False)
    token = await token_for(client, None, "repository:library/alpine:pull")
    for name, query, _ in WAYS_IN:
        assert (await _get(client, name, query, bearer(token))).status_code == 403
        assert (await _get(client, name, query)).status_code == 401
    # A private mirror: only those with rights on the docker.io namespace (here the admin).
    assert (await _get(client, "docker.io/library/alpine", "", basic("jimo"))).status_code == 403
    assert (await _get(client, "docker.io/library/alpine", "", basic("admin"))).status_code == 200


async def test_the_catalog_lists_mirrors_as_their_upstreams_access_says(
    client: httpx.AsyncClient,
) -> None:
    for name in ("docker.io/library/alpine", "ghcr.io/team/tool"):
        assert (await _get(client, name, "", basic("jimo"))).status_code == 200
    anonymous = await token_for(client, None, "registry:catalog:*")
    listed = await client.get("/v2/_catalog", headers=bearer(anonymous))
    assert listed.json()["repositories"] == ["docker.io/library/alpine"]
    signed_in = await client.get("/v2/_catalog", headers=basic("lee"))
    assert signed_in.json()["repositories"] == ["docker.io/library/alpine", "ghcr.io/team/tool"]


class _As(httpx.AsyncClient):
    """`client` with credentials on every request (for the push helpers)."""

    def __init__(self, client: httpx.AsyncClient, headers: dict[str, str]) -> None:
        self.__dict__.update(client.__dict__)
        self._extra = headers

    async def send(self, request: httpx.Request, **kwargs: object) -> httpx.Response:
        request.headers.update(self._extra)
        return await super().send(request, **kwargs)  # type: ignore[arg-type]
