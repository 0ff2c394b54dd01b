"""Issue 16: webhooks of a namespace or a repository, managed by their owners over /api/v1."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from cangku.app import create_app
from cangku.auth.accounts import Accounts
from cangku.config import Settings
from cangku.events.delivery import Deliverer
from cangku.registry import Registry
from tests.api.events_receiver import Receiver, verify
from tests.api.helpers import OCI_MANIFEST, push_image
from tests.auth.conftest import As, basic


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    # The receiver runs on loopback: allowed here (the SSRF test builds its own app).
    return Settings(data=tmp_path / "data", events={"allow_private": True})


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    running = Receiver()
    yield running
    running.stop()


@pytest.fixture
async def organization(accounts: Accounts) -> None:
    await accounts.add_organization("acme")
    await accounts.set_member("acme", "lee", "owner")
    await accounts.set_member("acme", "jimo", "writer")


async def create(
    client: httpx.AsyncClient, scope: str, user: str, **document: object
) -> httpx.Response:
    with As(client, basic(user)):
        return await client.post(f"/api/v1/{scope}/webhooks", json=document)


async def test_owners_create_list_and_delete_webhooks_and_the_secret_is_shown_once(
    client: httpx.AsyncClient,
    receiver: Receiver,
    organization: None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    made = await create(
        client, "namespaces/jimo", "jimo", url=receiver.url, types=["io.cangku.tag.created"]
    )
    assert made.status_code == 201, made.text
    secret = made.json()["secret"]
    assert secret.startswith("whsec_")
    assert (made.json()["namespace"], made.json()["repository"]) == ("jimo", None)
    by_lee = await create(client, "repositories/acme/app", "lee", url=receiver.url, tags=["1.*"])
    assert by_lee.status_code == 201, by_lee.text
    by_admin = await create(client, "namespaces/acme", "admin", url=receiver.url)
    assert by_admin.status_code == 201

    with As(client, basic("jimo")):
        listed = await client.get("/api/v1/namespaces/jimo/webhooks")
        one = await client.get(f"/api/v1/webhooks/{made.json()['id']}")
    assert [hook["url"] for hook in listed.json()["webhooks"]] == [receiver.url]
    assert one.json()["types"] == ["io.cangku.tag.created"] and one.json()["deliveries"] == []
    with As(client, basic("lee")):
        repository = await client.get("/api/v1/repositories/acme/app/webhooks")
    assert [hook["tags"] for hook in repository.json()["webhooks"]] == [["1.*"]]
    # Never again: not in a listing, nor a webhook's page, nor a log line.
    for shown in (listed.text, one.text, repository.text, caplog.text):
        assert secret not in shown and "whsec_" not in shown

    with As(client, basic("jimo")):
        gone = await client.delete(f"/api/v1/webhooks/{made.json()['id']}")
        again = await client.get(f"/api/v1/webhooks/{made.json()['id']}")
    assert gone.status_code == 204
    assert (again.status_code, again.json()["error"]["code"]) == (404, "WEBHOOK_UNKNOWN")


async def test_non_owners_are_denied(
    client: httpx.AsyncClient, receiver: Receiver, organization: None
) -> None:
    made = await create(client, "namespaces/acme", "lee", url=receiver.url)
    hook = made.json()["id"]
    # jimo writes to acme but does not own it; lee owns acme, not jimo's namespace.
    refused = [
        await create(client, "namespaces/acme", "jimo", url=receiver.url),
        await create(client, "repositories/acme/app", "jimo", url=receiver.url),
        await create(client, "namespaces/jimo", "lee", url=receiver.url),
    ]
    with As(client, basic("jimo")):
        refused += [
            await client.get("/api/v1/namespaces/acme/webhooks"),
            await client.get(f"/api/v1/webhooks/{hook}"),
            await client.delete(f"/api/v1/webhooks/{hook}"),
            await client.post(f"/api/v1/webhooks/{hook}/test"),
            await client.post(f"/api/v1/webhooks/{hook}/deliveries/1/redeliver"),
        ]
    for response in refused:
        assert (response.status_code, response.json()["error"]["code"]) == (403, "DENIED")
    anonymous = await client.get("/api/v1/namespaces/acme/webhooks")
    assert anonymous.status_code == 401


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"url": "ftp://hooks.example/x"}, "http(s)"),
        ({"url": "https://user:pw@hooks.example/x"}, "credentials"),
        ({"url": "https://hooks.example:99999/x"}, "not a URL"),
        ({"url": "https://hooks.example/" + "x" * 2000}, "longer"),
        ({"url": "https://hooks.example/x", "types": ["io.cangku.nope"]}, "unknown event types"),
        ({"url": "https://hooks.example/x", "types": "io.cangku.tag.moved"}, "list of strings"),
        ({"url": "https://hooks.example/x", "tags": [""]}, "patterns"),
        ({"url": "https://hooks.example/x", "format": "xml"}, "format"),
        ({"url": "https://hooks.example/x", "secret": "whsec_x"}, "unknown fields"),
        ([], "send"),
    ],
)
async def test_bad_webhooks_are_refused(
    client: httpx.AsyncClient, accounts: Accounts, document: object, message: str
) -> None:
    with As(client, basic("jimo")):
        response = await client.post("/api/v1/namespaces/jimo/webhooks", json=document)
    assert response.status_code == 400
    assert message in response.json()["error"]["message"]


async def test_private_addresses_are_refused_at_creation(
    settings: Settings, registry: Registry, accounts: Accounts
) -> None:
    strict = settings.model_copy(
        update={"events": settings.events.model_copy(update={"allow_private": False})}
    )
    app = create_app(strict, registry)
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 4321))
    async with httpx.AsyncClient(transport=transport, base_url="http://registry.test") as client:
        for url in (
            "http://127.0.0.1:8080/hook",
            "http://169.254.169.254/latest/meta-data",
            "http://[::1]/x",
            "http://10.1.2.3/x",
            "http://localhost/x",
        ):
            response = await create(client, "namespaces/jimo", "jimo", url=url)
            assert response.status_code == 400, url
            assert "not a public address" in response.json()["error"]["message"]
        with As(client, basic("jimo")):
            listed = await client.get("/api/v1/namespaces/jimo/webhooks")
        assert listed.json()["webhooks"] == []


async def test_a_repository_webhook_gets_its_events_signed_with_its_secret(
    client: httpx.AsyncClient, registry: Registry, settings: Settings, receiver: Receiver
) -> None:
    made = await create(client, "repositories/jimo/app", "jimo", url=receiver.url, tags=["1.*"])
    secret = made.json()["secret"]
    namespace_hook = await create(
        client, "namespaces/jimo", "jimo", url=receiver.url, types=["io.cangku.manifest.pushed"]
    )
    worker = Deliverer(registry.metadata, settings.events)
    with As(client, basic("jimo")):
        _, content = await push_image(client, "jimo/app")
        _, other = await push_image(client, "jimo/other")
        for repository, manifest in (("jimo/app", content), ("jimo/other", other)):
            response = await client.put(
                f"/v2/{repository}/manifests/1.0.0",
                content=manifest,
                headers={"Content-Type": OCI_MANIFEST},
            )
            assert response.status_code == 201
    await worker.fan_out()
    await worker.deliver_due()
    await worker.close()
    by_hook: dict[str, list[tuple[str, str, str | None]]] = {}
    for headers, body in receiver.requests:
        event = json.loads(body)
        tag = event["data"].get("tag")
        for name, key in (("app", secret), ("namespace", namespace_hook.json()["secret"])):
            if verify(key, headers, body):
                by_hook.setdefault(name, []).append(
                    (event["type"], event["data"]["repository"], tag)
                )
    # The repository's: only jimo/app, only tags matching 1.* (not `1`,
    # not `latest`) and the push naming one.
    assert sorted(by_hook["app"], key=str) == sorted(
        [
            ("io.cangku.repository.created", "jimo/app", None),
            ("io.cangku.manifest.pushed", "jimo/app", None),
            ("io.cangku.tag.created", "jimo/app", "1.0.0"),
            ("io.cangku.tag.created", "jimo/app", "1.0"),
        ],
        key=str,
    )
    # The namespace's: pushes of both repositories.
    assert {(kind, repository) for kind, repository, _ in by_hook["namespace"]} == {
        ("io.cangku.manifest.pushed", "jimo/app"),
        ("io.cangku.manifest.pushed", "jimo/other"),
    }
    assert len(receiver.requests) == len(by_hook["app"]) + len(by_hook["namespace"])


async def test_history_test_event_and_redeliver(
    client: httpx.AsyncClient, registry: Registry, settings: Settings, receiver: Receiver
) -> None:
    made = await create(client, "namespaces/jimo", "jimo", url=receiver.url)
    hook, secret = made.json()["id"], made.json()["secret"]
    worker = Deliverer(registry.metadata, settings.events)
    with As(client, basic("jimo")):
        queued = await client.post(f"/api/v1/webhooks/{hook}/test")
        assert queued.status_code == 202
        assert await worker.deliver_due() == 1
        [(headers, body)] = receiver.requests
        assert verify(secret, headers, body)
        event = json.loads(body)
        assert (event["type"], event["data"]["webhook"], event["data"]["actor"]) == (
            "io.cangku.test",
            hook,
            "jimo",
        )
        receiver.status = 500
        await client.post(f"/api/v1/webhooks/{hook}/test")
        await worker.deliver_due()
        history = (await client.get(f"/api/v1/webhooks/{hook}")).json()["deliveries"]
        assert [(d["state"], d["status"], d["error"]) for d in history] == [
            ("pending", 500, "HTTP 500"),
            ("delivered", 204, None),
        ]
        assert all(d["latency"] >= 0 for d in history)
        receiver.status = 204
        again = await client.post(
            f"/api/v1/webhooks/{hook}/deliveries/{history[1]['id']}/redeliver"
        )
        assert again.status_code == 202
        assert await worker.deliver_due() == 1
        assert [h["webhook-id"] for h, _ in receiver.requests][-1] == history[1]["event"]
        # Another endpoint's delivery, an unknown one: 404 (not redelivered).
        unknown = await client.post(f"/api/v1/webhooks/{hook}/deliveries/999999/redeliver")
        assert (unknown.status_code, unknown.json()["error"]["code"]) == (
            404,
            "DELIVERY_UNKNOWN",
        )
        for bad in (f"/api/v1/webhooks/{hook}?limit=0", "/api/v1/webhooks/x"):
            assert (await client.get(bad)).status_code == 400
        # Deleting the webhook deletes its history; a queued delivery is not sent.
        await client.post(f"/api/v1/webhooks/{hook}/test")
        assert (await client.delete(f"/api/v1/webhooks/{hook}")).status_code == 204
    sent = len(receiver.requests)
    assert await worker.deliver_due() == 0
    await worker.close()
    assert len(receiver.requests) == sent


async def test_a_distribution_webhook_gets_an_empty_envelope_as_its_test_event(
    client: httpx.AsyncClient, registry: Registry, settings: Settings, receiver: Receiver
) -> None:
    made = await create(client, "namespaces/jimo", "jimo", url=receiver.url, format="distribution")
    hook, secret = made.json()["id"], made.json()["secret"]
    worker = Deliverer(registry.metadata, settings.events)
    with As(client, basic("jimo")):
        assert (await client.post(f"/api/v1/webhooks/{hook}/test")).status_code == 202
    assert await worker.deliver_due() == 1
    await worker.close()
    [(headers, body)] = receiver.requests
    assert headers["content-type"] == "application/vnd.docker.distribution.events.v2+json"
    assert json.loads(body) == {"events": []} and verify(secret, headers, body)


async def test_at_most_20_webhooks_per_namespace_or_repository(
    client: httpx.AsyncClient, accounts: Accounts, receiver: Receiver
) -> None:
    for _ in range(20):
        assert (
            await create(client, "namespaces/jimo", "jimo", url=receiver.url)
        ).status_code == 201
    refused = await create(client, "namespaces/jimo", "jimo", url=receiver.url)
    assert refused.status_code == 400 and "at most 20" in refused.json()["error"]["message"]
    # A repository of the namespace is a scope of its own.
    assert (
        await create(client, "repositories/jimo/app", "jimo", url=receiver.url)
    ).status_code == 201
