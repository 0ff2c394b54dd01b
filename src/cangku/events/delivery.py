"""Delivering the outbox to the endpoints: at least once, signed, with backoff.

The endpoints are the configured ones (`events.endpoints`) and the webhooks of namespaces
and repositories (events/webhooks.py). The worker (started in every server's lifespan, as
owners add webhooks at run time) polls with one read (anything to hand out, anything due?)
and, when there is work:
1. fan-out: each committed event not yet handed out gets a delivery row per endpoint whose
   scope covers its repository and whose filters take it, and is marked handed out — one
   transaction, the event rows locked (`FOR UPDATE SKIP LOCKED`), so replicas never add the
   same delivery twice;
2. claim: due deliveries are leased (pushed ahead by the attempt's time limit, attempt
   counted) in one transaction, skipping rows another replica holds (PostgreSQL `FOR UPDATE
   SKIP LOCKED`); a worker killed mid-send leaves them due again when the lease ends;
3. send, each attempt on its own (at most MAX_IN_FLIGHT), so a slow receiver holds up only
   itself: resolve the host once, check every address (the SSRF guard, events/guard.py),
   connect to the checked one, POST the event (CloudEvents structured mode, or the
   Distribution envelope) with the Standard Webhooks headers; 2xx is delivered; anything
   else is retried after 1 s, 2 s, 4 s, … (at most an hour) until the event is older than
   `events.max_age`, then marked failed;
4. every minute, prune events older than `events.keep` that are delivered or given up.

Every attempt of an event carries the same `webhook-id` (the CloudEvents `id`): receivers
de-duplicate by it, as at-least-once delivery can repeat one whose reply was lost.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import httpx

from cangku.config import EventEndpoint, EventSettings
from cangku.events import distribution
from cangku.events.guard import (
    Refused,
    Resolver,
    Target,
    check_address,
    resolve,
    system_resolver,
)
from cangku.events.signing import signature
from cangku.events.webhooks import TEST, Endpoint, delivery_json, webhook_id
from cangku.metadata import Connection, MetadataStore, Row
from cangku.metadata import events as event_rows
from cangku.metadata import webhooks as webhook_rows

log = logging.getLogger(__name__)

CONTENT_TYPE = "application/cloudevents+json; charset=utf-8"
# Of a receiver's reply only this much is read (kept for the history): a hostile receiver
# cannot make the registry buffer a large body.
MAX_REPLY_BYTES = 4096
FIRST_RETRY = 1.0
LONGEST_RETRY = 3600.0
BATCH = 100
# Attempts one worker runs at once (each holds a connection until its reply or timeout).
MAX_IN_FLIGHT = 200
POLL_SECONDS = 0.5
# Pruning and the backlog gauge run this often, not on every poll.
HOUSEKEEPING_SECONDS = 60.0
PRUNE_BATCH = 1000

# endpoint kind (server, namespace, repository), outcome (delivered, retry, failed), seconds.
Observer = Callable[[str, str, float], None]

__all__ = ["Deliverer", "Refused", "backoff", "check_address", "takes"]


def takes(endpoint: EventEndpoint | Endpoint, kind: str, payload: dict[str, Any]) -> bool:
    """Whether `endpoint`'s filters take this event (Endpoint.takes)."""
    if isinstance(endpoint, EventEndpoint):
        endpoint = Endpoint.configured(endpoint)
    return endpoint.takes(kind, payload)


def backoff(attempts: int) -> float:
    """Seconds before the next attempt after `attempts` failed ones: 1, 2, 4, … ≤ an hour."""
    return float(min(FIRST_RETRY * 2 ** max(attempts - 1, 0), LONGEST_RETRY))


class Deliverer:
    """The delivery worker of one process (module docstring). `clock` gives Unix seconds;
    `resolver` resolves endpoint hosts (the SSRF guard, events/guard.py); `observe` is told
    of each attempt's outcome (the metrics)."""

    def __init__(
        self,
        metadata: MetadataStore,
        settings: EventSettings,
        *,
        clock: Callable[[], float] = time.time,
        transport: httpx.AsyncBaseTransport | None = None,
        resolver: Resolver = system_resolver,
        observe: Observer | None = None,
    ) -> None:
        self.metadata = metadata
        self.settings = settings
        self.clock = clock
        self.resolver = resolver
        self.observe = observe
        self.endpoints = {
            endpoint.url: Endpoint.configured(endpoint) for endpoint in settings.endpoints
        }
        self.client = httpx.AsyncClient(
            timeout=httpx.Timeout(settings.timeout),
            follow_redirects=False,  # a redirect could lead past the SSRF guard
            transport=transport,
        )
        self._housekept = 0.0
        self._in_flight: set[asyncio.Task[None]] = set()

    async def close(self) -> None:
        """Stop the attempts in flight (their leases run out: sent again later) and close."""
        for task in list(self._in_flight):
            task.cancel()
        await asyncio.gather(*self._in_flight, return_exceptions=True)
        await self.client.aclose()

    async def run(self) -> None:
        """Fan out and deliver until cancelled, prune now and then; errors are logged, the
        loop goes on."""
        while True:
            try:
                unfanned, due = await self.metadata.read(self._work_waiting)
                if unfanned:
                    await self.fan_out()
                if unfanned or due:
                    await self.dispatch_due()
                if self.clock() - self._housekept >= HOUSEKEEPING_SECONDS:
                    self._housekept = self.clock()
                    await self.prune()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("event delivery failed; trying again")
            await asyncio.sleep(POLL_SECONDS)

    def _work_waiting(self, connection: Connection) -> tuple[bool, bool]:
        return event_rows.work_waiting(connection, self.clock())

    async def prune(self) -> int:
        """Delete events older than `events.keep` that are handed out and no longer pending
        anywhere, with their deliveries, oldest first, a batch per transaction; returns how
        many events went."""
        before = self.clock() - self.settings.keep
        pruned = 0
        while True:
            removed = await self.metadata.write(
                lambda connection: event_rows.prune(connection, before, PRUNE_BATCH)
            )
            pruned += removed
            if removed < PRUNE_BATCH:
                return pruned

    async def fan_out(self) -> int:
        """Add the delivery rows of events not yet handed out; returns how many."""
        added = 0
        while True:
            done, rows = await self.metadata.write(self._fan_out)
            added += rows
            if done < BATCH:
                return added

    def _fan_out(self, connection: Connection) -> tuple[int, int]:
        found = event_rows.not_fanned_out(connection, BATCH)
        now = self.clock()
        # The webhooks of the namespaces in this batch: one query per batch, not per event.
        namespaces = sorted({row.repository.split("/", 1)[0] for row in found})
        endpoints = list(self.endpoints.values()) + [
            Endpoint.of_row(row) for row in webhook_rows.of_namespaces(connection, namespaces)
        ]
        deliveries: list[dict[str, object]] = [
            {
                "event_id": row.id,
                "endpoint": endpoint.key,
                "state": "pending",
                "attempts": 0,
                "created_at": now,
                "next_attempt_at": now,
            }
            for row in found
            # Older than max_age (recorded while no worker ran, say): given up unsent.
            if now - row.created_at <= self.settings.max_age
            for endpoint in endpoints
            if endpoint.covers(row.repository) and endpoint.takes(row.type, json.loads(row.payload))
        ]
        event_rows.insert_deliveries(connection, deliveries)
        if found:
            event_rows.mark_fanned_out(connection, [row.id for row in found])
        return len(found), len(deliveries)

    async def deliver_due(self) -> int:
        """Send every delivery due now (concurrently) and wait for the replies; returns how
        many were attempted."""
        claimed = await self._claim(BATCH)
        await asyncio.gather(*(self._attempt(row, endpoint) for row, endpoint in claimed))
        return len(claimed)

    async def dispatch_due(self) -> int:
        """Start sending the deliveries due now without waiting for their replies (the
        worker's loop): a slow receiver holds only its own attempts, never the next events
        for the others. At most MAX_IN_FLIGHT attempts run at once; returns how many began."""
        room = MAX_IN_FLIGHT - len(self._in_flight)
        if room <= 0:
            return 0
        claimed = await self._claim(min(room, BATCH))
        for row, endpoint in claimed:
            task = asyncio.create_task(self._attempt(row, endpoint))
            self._in_flight.add(task)
            task.add_done_callback(self._in_flight.discard)
        return len(claimed)

    async def _claim(self, limit: int) -> list[tuple[Row[Any], Endpoint | None]]:
        """Lease up to `limit` due deliveries, with their endpoints (None: gone)."""
        now = self.clock()
        lease = self.settings.timeout + 30.0

        def claim(connection: Connection) -> tuple[list[Row[Any]], dict[str, Endpoint]]:
            rows = event_rows.claim_due(connection, now, lease, limit)
            ids = [found for row in rows if (found := webhook_id(row.endpoint)) is not None]
            hooks = [Endpoint.of_row(hook) for hook in webhook_rows.by_ids(connection, ids)]
            return rows, {hook.key: hook for hook in hooks}

        claimed, hooks = await self.metadata.write(claim)
        return [
            (row, self.endpoints.get(row.endpoint) or hooks.get(row.endpoint)) for row in claimed
        ]

    async def _attempt(self, row: Row[Any], endpoint: Endpoint | None) -> None:
        attempts = row.attempts + 1
        started = self.clock()
        status: int | None = None
        error: str | None = None
        try:
            if endpoint is None:
                raise Refused("the endpoint is no longer configured")
            # Resolved once, checked, and connected to the checked address (DNS rebinding).
            target = await resolve(endpoint.url, self.settings.allow_private, self.resolver)
            # The whole attempt, not each phase: a receiver dribbling its reply is cut off.
            async with asyncio.timeout(self.settings.timeout):
                status = await self._send(endpoint, target, row.event_id, row.payload.encode())
            if not 200 <= status < 300:
                error = f"HTTP {status}"
        except Refused as refused:
            error = f"refused: {refused}"
        except TimeoutError:
            error = f"no reply within {self.settings.timeout:g} s"
        except httpx.HTTPError as failure:
            error = f"{type(failure).__name__}: {failure}"[:500]
        now = self.clock()
        latency = max(now - started, 0.0)
        values: dict[str, object] = {
            "last_status": status,
            "last_error": error[:500] if error else None,
            "latency": latency,
        }
        if error is None:
            outcome = "delivered"
            values.update(state="delivered", finished_at=now)
        elif endpoint is None or now - row.created_at + backoff(attempts) > self.settings.max_age:
            outcome = "failed"
            values.update(state="failed", finished_at=now)
            # The key, never a webhook's URL in full: it may carry a token in its path.
            log.warning("gave up delivering event %s to %s: %s", row.event_id, row.endpoint, error)
        else:
            outcome = "retry"
            values.update(next_attempt_at=now + backoff(attempts))
        if self.observe is not None:
            self.observe(endpoint.kind if endpoint is not None else "server", outcome, latency)
        await self.metadata.write(
            lambda connection: event_rows.finish_attempt(connection, row.id, values)
        )

    async def _send(self, endpoint: Endpoint, target: Target, event_id: str, body: bytes) -> int:
        timestamp = int(self.clock())
        content_type = CONTENT_TYPE
        if endpoint.format == "distribution":
            content_type = distribution.MEDIA_TYPE
            event = json.loads(body)
            # Distribution has no test event: an empty envelope checks the wiring.
            envelope = {"events": []} if event["type"] == TEST else distribution.envelope(event)
            body = json.dumps(envelope).encode()
        headers = {
            "host": target.host,
            "content-type": content_type,
            "webhook-id": event_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": signature(endpoint.secret, event_id, timestamp, body),
        }
        extensions = {"sni_hostname": target.server_name} if target.server_name else {}
        request = self.client.build_request(
            "POST", target.url, content=body, headers=headers, extensions=extensions
        )
        reply = await self.client.send(request, stream=True)
        try:
            read = 0
            async for chunk in reply.aiter_raw():
                read += len(chunk)
                if read >= MAX_REPLY_BYTES:
                    break
            return reply.status_code
        finally:
            await reply.aclose()


async def endpoint_history(
    metadata: MetadataStore, settings: EventSettings, limit: int
) -> list[dict[str, object]]:
    """Each configured endpoint (never its secret) with its last `limit` deliveries, newest
    first: event id and type, state, attempts, the last attempt's HTTP status, error and
    latency (seconds), when it was queued and finished (Unix seconds)."""

    def read(connection: Connection) -> list[dict[str, object]]:
        return [
            {
                "url": endpoint.url,
                "format": endpoint.format,
                "types": endpoint.types,
                "tags": endpoint.tags,
                "deliveries": [
                    delivery_json(row)
                    for row in event_rows.history(connection, endpoint.url, limit)
                ],
            }
            for endpoint in settings.endpoints
        ]

    return await metadata.read(read)


async def redeliver(metadata: MetadataStore, delivery_id: int) -> bool:
    """Queue delivery `delivery_id` again, due now (also a delivered or failed one); False
    when there is none."""
    now = time.time()
    return await metadata.write(
        lambda connection: event_rows.redeliver(connection, delivery_id, now)
    )
