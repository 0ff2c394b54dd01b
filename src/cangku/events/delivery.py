"""Delivering the outbox to the configured endpoints: at least once, signed, with backoff.

The worker (started in the app's lifespan when `events.endpoints` is set) loops over:
1. fan-out: each committed event not yet handed out gets a delivery row per endpoint whose
   filters take it, and is marked handed out — one transaction, the event rows locked
   (`FOR UPDATE SKIP LOCKED`), so replicas never add the same delivery twice;
2. claim: due deliveries are leased (pushed ahead by the attempt's time limit, attempt
   counted) in one transaction, skipping rows another replica holds (PostgreSQL `FOR UPDATE
   SKIP LOCKED`); a worker killed mid-send leaves them due again when the lease ends;
3. send: POST the event (CloudEvents structured mode) with the Standard Webhooks headers;
   2xx is delivered; anything else is retried after 1 s, 2 s, 4 s, … (at most an hour) until
   the event is older than `events.max_age`, then marked failed.

Every attempt of an event carries the same `webhook-id` (the CloudEvents `id`): receivers
de-duplicate by it, as at-least-once delivery can repeat one whose reply was lost.
"""

from __future__ import annotations

import asyncio
import fnmatch
import ipaddress
import json
import logging
import socket
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import httpx

from cangku.config import EventEndpoint, EventSettings
from cangku.events import distribution
from cangku.events.signing import signature
from cangku.metadata import Connection, MetadataStore, Row
from cangku.metadata import events as event_rows

log = logging.getLogger(__name__)

CONTENT_TYPE = "application/cloudevents+json; charset=utf-8"
# Of a receiver's reply only this much is read (kept for the history): a hostile receiver
# cannot make the registry buffer a large body.
MAX_REPLY_BYTES = 4096
FIRST_RETRY = 1.0
LONGEST_RETRY = 3600.0
BATCH = 100
POLL_SECONDS = 0.5


class Refused(Exception):
    """The endpoint's address is not one the registry may send to (the SSRF guard)."""


async def check_address(url: str, allow_private: bool) -> None:
    """Raise Refused when `url`'s host resolves to a loopback, link-local, private, reserved
    or otherwise non-global address and `allow_private` is off (every address the name
    resolves to must be global)."""
    if allow_private:
        return
    host = urlsplit(url).hostname or ""
    port = urlsplit(url).port or 443
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as error:
        raise Refused(f"cannot resolve {host[:100]}: {error}") from None
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%")[0])
        if not address.is_global:
            raise Refused(
                f"{host[:100]} resolves to {address}, not a public address "
                "(events.allow_private is off)"
            )


def takes(endpoint: EventEndpoint, kind: str, payload: dict[str, Any]) -> bool:
    """Whether `endpoint`'s filters take this event: its type among `types` (if any) and one
    its format can carry, and,
    with `tags` patterns, a tag event's tag or one of a push's tags matching one. Events
    about no tag (manifest and repository deletions) pass the tag filter."""
    if endpoint.types and kind not in endpoint.types:
        return False
    if endpoint.format == "distribution" and kind not in distribution.TYPES:
        return False
    if not endpoint.tags:
        return True
    data = payload.get("data", {})
    if "tag" in data:
        names = [data["tag"]]
    elif "tags" in data:
        names = list(data["tags"])
    else:
        return True
    return any(fnmatch.fnmatchcase(name, pattern) for name in names for pattern in endpoint.tags)


def backoff(attempts: int) -> float:
    """Seconds before the next attempt after `attempts` failed ones: 1, 2, 4, … ≤ an hour."""
    return float(min(FIRST_RETRY * 2 ** max(attempts - 1, 0), LONGEST_RETRY))


class Deliverer:
    """The delivery worker of one process (module docstring). `clock` gives Unix seconds."""

    def __init__(
        self,
        metadata: MetadataStore,
        settings: EventSettings,
        *,
        clock: Callable[[], float] = time.time,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.metadata = metadata
        self.settings = settings
        self.clock = clock
        self.endpoints = {endpoint.url: endpoint for endpoint in settings.endpoints}
        self.client = httpx.AsyncClient(
            timeout=httpx.Timeout(settings.timeout),
            follow_redirects=False,  # a redirect could lead past the SSRF guard
            transport=transport,
        )

    async def close(self) -> None:
        await self.client.aclose()

    async def run(self) -> None:
        """Fan out and deliver until cancelled; errors are logged, the loop goes on."""
        while True:
            try:
                await self.fan_out()
                await self.deliver_due()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("event delivery failed; trying again")
            await asyncio.sleep(POLL_SECONDS)

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
        deliveries: list[dict[str, object]] = [
            {
                "event_id": row.id,
                "endpoint": endpoint.url,
                "state": "pending",
                "attempts": 0,
                "created_at": now,
                "next_attempt_at": now,
            }
            for row in found
            # Older than max_age (recorded while no worker ran, say): given up unsent.
            if now - row.created_at <= self.settings.max_age
            for endpoint in self.endpoints.values()
            if takes(endpoint, row.type, json.loads(row.payload))
        ]
        event_rows.insert_deliveries(connection, deliveries)
        if found:
            event_rows.mark_fanned_out(connection, [row.id for row in found])
        return len(found), len(deliveries)

    async def deliver_due(self) -> int:
        """Send every delivery due now (concurrently); returns how many were attempted."""
        now = self.clock()
        lease = self.settings.timeout + 30.0
        claimed = await self.metadata.write(
            lambda connection: event_rows.claim_due(connection, now, lease, BATCH)
        )
        await asyncio.gather(*(self._attempt(row) for row in claimed))
        return len(claimed)

    async def _attempt(self, row: Row[Any]) -> None:
        endpoint = self.endpoints.get(row.endpoint)
        attempts = row.attempts + 1
        started = self.clock()
        status: int | None = None
        error: str | None = None
        try:
            if endpoint is None:
                raise Refused("the endpoint is no longer configured")
            await check_address(endpoint.url, self.settings.allow_private)
            # The whole attempt, not each phase: a receiver dribbling its reply is cut off.
            async with asyncio.timeout(self.settings.timeout):
                status = await self._send(endpoint, row.event_id, row.payload.encode())
            if not 200 <= status < 300:
                error = f"HTTP {status}"
        except Refused as refused:
            error = f"refused: {refused}"
        except TimeoutError:
            error = f"no reply within {self.settings.timeout:g} s"
        except httpx.HTTPError as failure:
            error = f"{type(failure).__name__}: {failure}"[:500]
        now = self.clock()
        values: dict[str, object] = {
            "last_status": status,
            "last_error": error[:500] if error else None,
            "latency": max(now - started, 0.0),
        }
        if error is None:
            values.update(state="delivered", finished_at=now)
        elif now - row.created_at + backoff(attempts) > self.settings.max_age:
            values.update(state="failed", finished_at=now)
            log.warning("gave up delivering event %s to %s: %s", row.event_id, row.endpoint, error)
        else:
            values.update(next_attempt_at=now + backoff(attempts))
        await self.metadata.write(
            lambda connection: event_rows.finish_attempt(connection, row.id, values)
        )

    async def _send(self, endpoint: EventEndpoint, event_id: str, body: bytes) -> int:
        timestamp = int(self.clock())
        content_type = CONTENT_TYPE
        if endpoint.format == "distribution":
            content_type = distribution.MEDIA_TYPE
            body = json.dumps(distribution.envelope(json.loads(body))).encode()
        headers = {
            "content-type": content_type,
            "webhook-id": event_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": signature(
                endpoint.secret.get_secret_value(), event_id, timestamp, body
            ),
        }
        async with self.client.stream("POST", endpoint.url, content=body, headers=headers) as reply:
            read = 0
            async for chunk in reply.aiter_raw():
                read += len(chunk)
                if read >= MAX_REPLY_BYTES:
                    break
            return reply.status_code


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
                    {
                        "id": row.id,
                        "event": row.event_id,
                        "type": row.type,
                        "state": row.state,
                        "attempts": row.attempts,
                        "status": row.last_status,
                        "error": row.last_error,
                        "latency": row.latency,
                        "createdAt": row.created_at,
                        "finishedAt": row.finished_at,
                    }
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
