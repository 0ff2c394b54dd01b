"""Issue 16 (and 14's metrics): the SSRF guard pins the checked address; delivery metrics;
pruning keeps the outbox bounded without making a push cost more."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import event

from cangku.config import EventEndpoint, EventSettings
from cangku.events.delivery import Deliverer
from cangku.metadata import events as event_rows
from cangku.metadata.schema import event_deliveries
from cangku.observability import Metrics
from cangku.registry import Registry
from tests.api.events_receiver import Receiver
from tests.api.helpers import OCI_MANIFEST, push_image
from tests.api.test_events_delivery import SECRET, Clock
from tests.api.test_observability import value
from tests.tls import make_tls_files

REPO = "jimo/my-image"
PUBLIC = "93.184.216.34"
PUSHED = "io.cangku.manifest.pushed"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    running = Receiver()
    yield running
    running.stop()


class RebindingDns:
    """A resolver that answers a public address first and loopback afterwards (DNS
    rebinding), and a network that connects through it: a client that resolves the name a
    second time to connect reaches loopback."""

    def __init__(self, answers: list[list[str]]) -> None:
        self.answers = answers
        self.calls = 0
        self.connected: list[tuple[str, str, Any]] = []

    async def resolve(self, host: str, port: int) -> list[str]:
        answer = self.answers[min(self.calls, len(self.answers) - 1)]
        self.calls += 1
        return answer

    def transport(self) -> httpx.AsyncBaseTransport:
        dns = self

        class Network(httpx.AsyncBaseTransport):
            async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
                host = request.url.host
                try:
                    address = str(__import__("ipaddress").ip_address(host))
                except ValueError:  # a name: the "operating system" resolves it again
                    address = (await dns.resolve(host, request.url.port or 443))[0]
                dns.connected.append(
                    (address, request.headers["host"], request.extensions.get("sni_hostname"))
                )
                return httpx.Response(204, stream=httpx.ByteStream(b""))

        return Network()


async def test_the_checked_address_is_the_one_connected_to(
    client: httpx.AsyncClient, registry: Registry
) -> None:
    dns = RebindingDns([[PUBLIC], ["127.0.0.1"]])
    config = EventSettings(
        endpoints=[
            EventEndpoint(url="https://hooks.example:8443/hook", secret=SECRET, types=[PUSHED])
        ]
    )
    worker = Deliverer(registry.metadata, config, resolver=dns.resolve, transport=dns.transport())
    await push_image(client, REPO)
    await worker.fan_out()
    assert await worker.deliver_due() == 1
    await worker.close()
    # Resolved once; connected to the public address checked, with the name as Host and SNI.
    assert dns.connected == [(PUBLIC, "hooks.example:8443", "hooks.example")]
    assert dns.calls == 1


async def test_every_address_of_the_name_is_checked(
    client: httpx.AsyncClient, registry: Registry
) -> None:
    dns = RebindingDns([[PUBLIC, "127.0.0.1"]])
    config = EventSettings(
        endpoints=[EventEndpoint(url="http://hooks.example/h", secret=SECRET, types=[PUSHED])]
    )
    worker = Deliverer(registry.metadata, config, resolver=dns.resolve, transport=dns.transport())
    await push_image(client, REPO)
    await worker.fan_out()
    await worker.deliver_due()
    await worker.close()
    assert dns.connected == []
    [row] = await registry.metadata.read(
        lambda c: event_rows.history(c, config.endpoints[0].url, 10)
    )
    assert row.last_error.startswith("refused: hooks.example resolves to 127.0.0.1")


async def test_deliveries_are_counted_by_outcome_and_endpoint_kind_never_by_url(
    client: httpx.AsyncClient, registry: Registry, receiver: Receiver
) -> None:
    metrics = Metrics()
    metrics.watch_registry(registry)
    config = EventSettings(
        endpoints=[EventEndpoint(url=receiver.url, secret=SECRET, types=[PUSHED])],
        allow_private=True,
    )
    worker = Deliverer(registry.metadata, config, observe=metrics.observe_event_delivery)
    clock = Clock()
    await push_image(client, REPO)
    await push_image(client, REPO)
    text = metrics.exposition().decode()
    # Three events not handed out yet: the repository's creation, two pushes.
    assert value(text, "cangku_event_backlog") == 3
    await worker.fan_out()
    assert value(metrics.exposition().decode(), "cangku_event_backlog") == 2  # two pending
    receiver.status = 503
    await worker.deliver_due()
    receiver.status = 204
    await registry.metadata.write(
        lambda c: c.execute(event_deliveries.update().values(next_attempt_at=0))
    )
    await worker.deliver_due()
    # A delivery whose event is older than max_age when its attempt fails: failed.
    receiver.status = 500
    await push_image(client, REPO)
    await worker.fan_out()
    clock.now = time.time() + 10
    failing = Deliverer(
        registry.metadata,
        config.model_copy(update={"max_age": 5.0}),
        observe=metrics.observe_event_delivery,
        clock=clock,
    )
    await failing.deliver_due()
    await worker.close()
    await failing.close()
    text = metrics.exposition().decode()
    counted = {
        outcome: value(
            text, "cangku_event_deliveries_total", outcome=outcome, endpoint_kind="server"
        )
        for outcome in ("delivered", "retry", "failed")
    }
    assert counted == {"delivered": 2, "retry": 2, "failed": 1}
    assert value(text, "cangku_event_delivery_duration_seconds_count", endpoint_kind="server") == 5
    assert value(text, "cangku_event_backlog") == 0
    assert receiver.url not in text and REPO not in text


def old_events(count: int, at: float, *, fanned_out: bool = True) -> list[dict[str, object]]:
    return [
        {
            "event_id": f"old-{at}-{index}",
            "type": "io.cangku.manifest.pushed",
            "repository": REPO,
            "created_at": at,
            "payload": "{}",
            "fanned_out": True if fanned_out else None,
        }
        for index in range(count)
    ]


async def test_pruning_removes_old_finished_events_and_keeps_the_rest(
    client: httpx.AsyncClient, registry: Registry, receiver: Receiver
) -> None:
    clock = Clock()
    config = EventSettings(
        endpoints=[EventEndpoint(url=receiver.url, secret=SECRET, types=[PUSHED])],
        allow_private=True,
        keep=3600,
    )
    worker = Deliverer(registry.metadata, config, clock=clock)
    await push_image(client, REPO)
    await push_image(client, REPO)
    await worker.fan_out()
    await worker.deliver_due()  # two delivered
    receiver.status = 500
    await push_image(client, REPO)
    await worker.fan_out()
    await worker.deliver_due()  # one pending (retrying)
    await push_image(client, REPO)  # one not handed out
    assert await registry.metadata.read(event_rows.count) == (5, 3)
    clock.now += 3601
    assert await worker.prune() == 3  # the creation (sent nowhere) and two delivered
    # The retrying delivery's event and the one not handed out stay; the others went.
    assert await registry.metadata.read(event_rows.count) == (2, 1)
    # Bulk: more than one batch of old events goes, in batches.
    await registry.metadata.write(
        lambda c: event_rows.insert_events(c, old_events(2500, clock.now - 7200))
    )
    assert await worker.prune() == 2500
    assert await registry.metadata.read(event_rows.count) == (2, 1)
    await worker.close()


async def test_a_push_costs_the_same_with_a_large_outbox(
    client: httpx.AsyncClient, registry: Registry
) -> None:
    statements: list[str] = []

    def count(connection: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    async def push_statements(reference: str) -> list[str]:
        _, content = await push_image(client, REPO)
        statements.clear()
        event.listen(registry.metadata.engine, "before_cursor_execute", count)
        try:
            response = await client.put(
                f"/v2/{REPO}/manifests/{reference}",
                content=content,
                headers={"Content-Type": OCI_MANIFEST},
            )
            assert response.status_code == 201
        finally:
            event.remove(registry.metadata.engine, "before_cursor_execute", count)
        return list(statements)

    small = await push_statements("v1")
    await registry.metadata.write(
        lambda c: event_rows.insert_events(c, old_events(20000, time.time() - 86400))
    )
    large = await push_statements("v2")
    assert len(large) == len(small)
    # The outbox is only appended to by a push, never read.
    touching = [s for s in large if " events" in s.lower()]
    assert touching and all(s.lstrip().upper().startswith("INSERT") for s in touching)


async def test_a_slow_receiver_does_not_hold_up_the_others(
    client: httpx.AsyncClient, registry: Registry
) -> None:
    slow, fast = Receiver(threaded=True), Receiver(threaded=True)
    slow.delay = 3.0
    config = EventSettings(
        endpoints=[
            EventEndpoint(url=slow.url.replace("/hook", "/slow"), secret=SECRET, types=[PUSHED]),
            EventEndpoint(url=fast.url, secret=SECRET, types=[PUSHED]),
        ],
        allow_private=True,
        timeout=10,
    )
    worker = Deliverer(registry.metadata, config)
    running = asyncio.create_task(worker.run())
    try:
        await push_image(client, REPO)
        while not slow.requests:  # the slow receiver is busy with the first event
            await asyncio.sleep(0.05)
        await push_image(client, REPO)
        started = time.monotonic()
        while len(fast.requests) < 2 and time.monotonic() - started < 2.5:
            await asyncio.sleep(0.05)
        # The second event reached the fast receiver while the slow one still sleeps.
        assert len(fast.requests) == 2, time.monotonic() - started
    finally:
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
        await worker.close()
        slow.stop()
        fast.stop()


async def test_over_https_the_pinned_address_is_verified_against_the_name(
    client: httpx.AsyncClient, registry: Registry, tmp_path: Path
) -> None:
    # A receiver whose certificate names `localhost` (and 127.0.0.1); names seen via SNI.
    files = make_tls_files(tmp_path / "tls", [])
    receiver = Receiver(threaded=True)
    server_names: list[str | None] = []
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(files.cert, files.key)
    context.sni_callback = lambda _socket, name, _context: server_names.append(name)
    receiver.server.socket = context.wrap_socket(receiver.server.socket, server_side=True)
    port = receiver.port

    async def loopback(host: str, port: int) -> list[str]:
        return ["127.0.0.1"]

    right = f"https://localhost:{port}/hook"
    wrong = f"https://wrong.example:{port}/hook"  # also pinned to 127.0.0.1, which it covers
    config = EventSettings(
        endpoints=[
            EventEndpoint(url=right, secret=SECRET, types=[PUSHED]),
            EventEndpoint(url=wrong, secret=SECRET, types=[PUSHED]),
        ],
        allow_private=True,
    )
    worker = Deliverer(
        registry.metadata,
        config,
        resolver=loopback,
        transport=httpx.AsyncHTTPTransport(verify=files.context()),
    )
    try:
        await push_image(client, REPO)
        await worker.fan_out()
        assert await worker.deliver_due() == 2
    finally:
        await worker.close()
        receiver.stop()
    assert [headers["host"] for headers, _ in receiver.requests] == [f"localhost:{port}"]
    assert "localhost" in server_names
    [right_row] = await registry.metadata.read(lambda c: event_rows.history(c, right, 10))
    [wrong_row] = await registry.metadata.read(lambda c: event_rows.history(c, wrong, 10))
    assert right_row.state == "delivered"
    assert wrong_row.state == "pending" and "CERTIFICATE_VERIFY_FAILED" in wrong_row.last_error


async def test_an_idle_worker_takes_no_write_transaction(
    client: httpx.AsyncClient, registry: Registry, receiver: Receiver
) -> None:
    config = EventSettings(
        endpoints=[EventEndpoint(url=receiver.url, secret=SECRET)], allow_private=True
    )
    kinds: list[str] = []
    registry.metadata.on_transaction = lambda kind, seconds: kinds.append(kind)
    worker = Deliverer(registry.metadata, config)
    worker._housekept = time.time()  # no pruning in this window
    running = asyncio.create_task(worker.run())
    try:
        await asyncio.sleep(1.2)  # three polls of an empty outbox
        assert "read" in kinds and "write" not in kinds
        await push_image(client, REPO)
        while len(receiver.requests) < 2:  # the creation and the push, delivered
            await asyncio.sleep(0.05)
    finally:
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
        await worker.close()
        registry.metadata.on_transaction = None
