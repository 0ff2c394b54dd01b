"""A repository's services can be wrapped (issue 11): a class implementing the same protocol,
holding the inner service, installed through `Registry(wrap=...)`, sees a push made through
the real HTTP app, with the caller's RequestContext."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import httpx
import pytest

from cangku.app import create_app
from cangku.config import Settings
from cangku.content.errors import NameInvalid
from cangku.registry import Registry
from cangku.registry.context import RequestContext
from cangku.registry.protocols import ManifestService
from cangku.registry.records import PushedManifest, StoredManifest
from cangku.registry.repository import Repository
from tests.api.helpers import push_image


@dataclass
class Recording:
    """A ManifestService that records each call (repository, method, reference, context)
    and hands it on to the service it wraps."""

    inner: ManifestService
    name: str
    calls: list[tuple[str, str, str, RequestContext | None]] = field(default_factory=list)

    async def put(
        self,
        reference: str,
        content: bytes,
        content_type: str | None,
        context: RequestContext,
        extra_tags: list[str] | None = None,
    ) -> PushedManifest:
        self.calls.append((self.name, "put", reference, context))
        return await self.inner.put(reference, content, content_type, context, extra_tags)

    async def get(self, reference: str) -> StoredManifest:
        self.calls.append((self.name, "get", reference, None))
        return await self.inner.get(reference)

    async def delete(self, reference: str, context: RequestContext) -> None:
        self.calls.append((self.name, "delete", reference, context))
        await self.inner.delete(reference, context)


async def test_a_push_through_the_http_app_passes_through_a_wrapped_manifest_service(
    registry: Registry, data_dir: Path
) -> None:
    calls: list[tuple[str, str, str, RequestContext | None]] = []

    def wrap(handle: Repository) -> Repository:
        recording = Recording(handle.manifests, handle.name, calls)
        return replace(handle, manifests=recording)

    wrapped = Registry(registry.storage, registry.metadata, wrap=wrap)
    app = create_app(Settings(data=data_dir, auth={"open": True}), wrapped)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://registry.test") as client:
        digest, _ = await push_image(client, "jimo/app", "1.0.0")
        pushed = [call for call in calls if call[1] == "put"]
        assert [call[:3] for call in pushed] == [("jimo/app", "put", "1.0.0")]
        context = pushed[0][3]
        assert context is not None
        # Open mode: no user; the address and request id of the PUT itself.
        assert context.caller is None and context.address == "127.0.0.1"
        assert context.request_id is not None and len(context.request_id) == 16

        pulled = await client.get(
            "/v2/jimo/app/manifests/1.0.0",
            headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
        )
        assert pulled.status_code == 200
        assert pulled.headers["docker-content-digest"] == digest
        deleted = await client.delete(f"/v2/jimo/app/manifests/{digest}")
        assert deleted.status_code == 202
        request_id = deleted.headers["x-request-id"]

    assert [call[:3] for call in calls] == [
        ("jimo/app", "put", "1.0.0"),
        ("jimo/app", "get", "1.0.0"),
        ("jimo/app", "delete", digest),
    ]
    assert calls[2][3] == RequestContext(None, request_id, "127.0.0.1")


async def test_the_handle_validates_the_name_once_before_any_wrapper(registry: Registry) -> None:
    seen: list[str] = []

    def wrap(handle: Repository) -> Repository:
        seen.append(handle.name)
        return handle

    wrapped = Registry(registry.storage, registry.metadata, wrap=wrap)
    with pytest.raises(NameInvalid):
        wrapped.repository("Jimo/../app")
    assert seen == []
    assert wrapped.repository("jimo/app").name == "jimo/app"
    assert seen == ["jimo/app"]


async def test_a_name_s_handle_is_built_once_and_wrap_still_sees_every_one(
    registry: Registry,
) -> None:
    """Issue 11: the services hold only the core and the name, so a manifest GET reuses the
    name's handle instead of building five service objects."""
    assert registry.repository("jimo/app") is registry.repository("jimo/app")
    assert registry.repository("jimo/app") is not registry.repository("jimo/other")
    seen: list[str] = []

    def wrap(handle: Repository) -> Repository:
        seen.append(handle.name)
        return handle

    wrapped = Registry(registry.storage, registry.metadata, wrap=wrap)
    first, second = wrapped.repository("jimo/app"), wrapped.repository("jimo/app")
    assert first.manifests is second.manifests
    assert seen == ["jimo/app", "jimo/app"]
    with pytest.raises(NameInvalid):  # an invalid name is refused each time, never kept
        wrapped.repository("Jimo/../app")
    with pytest.raises(NameInvalid):
        wrapped.repository("Jimo/../app")


async def test_pulls_are_counted_around_a_wrapped_manifest_service(
    registry: Registry, data_dir: Path
) -> None:
    """Pull counting is itself a wrapper, outermost: what a wrapper (a cache) serves counts."""
    calls: list[tuple[str, str, str, RequestContext | None]] = []

    def wrap(handle: Repository) -> Repository:
        return replace(handle, manifests=Recording(handle.manifests, handle.name, calls))

    wrapped = Registry(registry.storage, registry.metadata, wrap=wrap)
    app = create_app(Settings(data=data_dir, auth={"open": True}), wrapped)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://registry.test") as client:
        await push_image(client, "jimo/app", "1.0.0")
        accept = {"Accept": "application/vnd.oci.image.manifest.v1+json"}
        assert (await client.get("/v2/jimo/app/manifests/1.0.0", headers=accept)).is_success
        assert (await client.head("/v2/jimo/app/manifests/1.0.0", headers=accept)).is_success
    assert [call[1:3] for call in calls if call[1] == "get"] == [("get", "1.0.0")] * 2
    counted = await wrapped.pulls.repository("jimo/app")
    assert counted.total.pulls == 1 and counted.tags["1.0.0"].pulls == 1
