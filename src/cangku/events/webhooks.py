"""Webhook endpoints of a namespace or of one repository, managed by their owners (issue 16).

Who may manage them follows the ownership rules (auth/permissions.py): those who may delete
in the namespace — the user whose namespace it is, the owners of an organization — and
administrators. An endpoint gets a new Standard Webhooks secret at creation; the reply that
created it is the only place it is shown (the JSON API, the page and the CLI never show it
again, and it is never logged). Its URL passes the SSRF guard at creation and before every
delivery (events/guard.py).

Deliveries to a webhook name it `webhook:<id>` in `event_deliveries.endpoint`; deleting a
webhook deletes its deliveries.
"""

from __future__ import annotations

import base64
import fnmatch
import json
import secrets
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from cangku.auth.permissions import DELETE, Principal
from cangku.config import EventEndpoint, EventSettings
from cangku.content.errors import DeliveryUnknown, NameInvalid, RequestInvalid
from cangku.content.names import validate_repository_name
from cangku.events import distribution, records
from cangku.events.guard import Refused, Resolver, check_address, system_resolver
from cangku.metadata import Connection, MetadataStore, Row, locks
from cangku.metadata import events as event_rows
from cangku.metadata import webhooks as webhook_rows
from cangku.registry.context import RequestContext

FORMATS = ("cloudevents", "distribution")
MAX_URL = 2000
MAX_PATTERNS = 20
MAX_PATTERN = 128
# Endpoints per namespace or repository: a bounded fan-out per event.
MAX_PER_SCOPE = 20
# The event "send test event" sends to one endpoint only.
TEST = "io.cangku.test"


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where events go, server-wide (from the configuration) or a webhook.

    `key` names it in `event_deliveries.endpoint` (the URL for a configured endpoint,
    `webhook:<id>` for a webhook); `kind` is `server`, `namespace` or `repository` (the
    metrics label: never the URL); `scope` the namespace or repository (None server-wide)."""

    key: str
    url: str
    secret: str
    types: tuple[str, ...]
    tags: tuple[str, ...]
    format: str
    kind: str
    scope: str | None = None

    def covers(self, repository: str) -> bool:
        """Whether events about `repository` are this endpoint's to receive."""
        if self.kind == "namespace":
            return repository.split("/", 1)[0] == self.scope
        if self.kind == "repository":
            return repository == self.scope
        return True

    def takes(self, kind: str, payload: dict[str, Any]) -> bool:
        """Whether the filters take this event: its type among `types` (if any) and one the
        format can carry, and, with `tags` patterns, a tag event's tag or one of a push's
        tags matching one (events about no tag pass the tag filter)."""
        if self.types and kind not in self.types:
            return False
        if kind == records.PULLED and kind not in self.types:
            return False  # opt-in: only for endpoints that name it
        if self.format == "distribution" and kind not in distribution.TYPES:
            return False
        if not self.tags:
            return True
        data = payload.get("data", {})
        if "tag" in data:
            names = [data["tag"]]
        elif "tags" in data:
            names = list(data["tags"])
        else:
            return True
        return any(fnmatch.fnmatchcase(name, pattern) for name in names for pattern in self.tags)

    @classmethod
    def configured(cls, endpoint: EventEndpoint) -> Endpoint:
        return cls(
            key=endpoint.url,
            url=endpoint.url,
            secret=endpoint.secret.get_secret_value(),
            types=tuple(endpoint.types),
            tags=tuple(endpoint.tags),
            format=endpoint.format,
            kind="server",
        )

    @classmethod
    def of_row(cls, row: Row[Any]) -> Endpoint:
        return cls(
            key=key(row.id),
            url=row.url,
            secret=row.secret,
            types=tuple(json.loads(row.types)),
            tags=tuple(json.loads(row.tags)),
            format=row.format,
            kind="namespace" if row.repository is None else "repository",
            scope=row.namespace if row.repository is None else row.repository,
        )


def key(webhook_id: int) -> str:
    """The `event_deliveries.endpoint` of webhook `webhook_id`."""
    return f"webhook:{webhook_id}"


def webhook_id(endpoint_key: str) -> int | None:
    """The webhook id of an endpoint key (None for a configured endpoint's URL)."""
    prefix, _, number = endpoint_key.partition(":")
    return int(number) if prefix == "webhook" and number.isdigit() else None


@dataclass(frozen=True, slots=True)
class Webhook:
    """A webhook as its owners see it: never its secret."""

    id: int
    namespace: str
    repository: str | None
    url: str
    types: list[str]
    tags: list[str]
    format: str
    created_by: str | None
    created_at: float

    @property
    def key(self) -> str:
        return key(self.id)

    @property
    def scope(self) -> str:
        return self.repository or self.namespace

    def to_json(self) -> dict[str, object]:
        return {
            "id": self.id,
            "namespace": self.namespace,
            "repository": self.repository,
            "url": self.url,
            "types": self.types,
            "tags": self.tags,
            "format": self.format,
            "createdBy": self.created_by,
            "createdAt": self.created_at,
        }

    @classmethod
    def of_row(cls, row: Row[Any]) -> Webhook:
        return cls(
            id=row.id,
            namespace=row.namespace,
            repository=row.repository,
            url=row.url,
            types=json.loads(row.types),
            tags=json.loads(row.tags),
            format=row.format,
            created_by=row.created_by,
            created_at=row.created_at,
        )


def may_manage(principal: Principal, namespace: str) -> bool:
    """Whether `principal` may manage the webhooks of `namespace` and of its repositories:
    an administrator, or one who may delete in the namespace (its owner, an organization's
    owners), within an access token's scope."""
    if DELETE not in principal.limit:
        return False
    return principal.is_admin or DELETE in principal.namespaces.get(namespace, frozenset())


def validate_namespace(namespace: str) -> str:
    """A namespace is one component of a repository name; raises NameInvalid."""
    if "/" in namespace:
        raise NameInvalid(f"invalid namespace {namespace[:300]!r}")
    return validate_repository_name(namespace)


@dataclass(frozen=True, slots=True)
class Spec:
    """What an owner asks for: the URL, the filters and the format."""

    url: str
    types: list[str]
    tags: list[str]
    format: str

    @classmethod
    def parse(cls, document: object) -> Spec:
        """From JSON `{"url": …, "types": [...], "tags": [...], "format": …}` (only `url`
        required). Raises RequestInvalid naming the first wrong field."""
        if not isinstance(document, dict):
            raise RequestInvalid('send {"url": "https://…", "types": [...], "tags": [...]}')
        unknown = sorted(set(document) - {"url", "types", "tags", "format"})
        if unknown:
            raise RequestInvalid(f"unknown fields {unknown[:5]}")
        url = document.get("url")
        if not isinstance(url, str):
            raise RequestInvalid("url must be a string")
        spec = cls(
            url=url,
            types=_strings(document.get("types", []), "types"),
            tags=_strings(document.get("tags", []), "tags"),
            format=document.get("format", "cloudevents"),
        )
        spec.check()
        return spec

    def check(self) -> None:
        """Raises RequestInvalid for a URL that is not http(s)://HOST/… (or carries
        credentials, or is longer than 2000), unknown types, bad patterns or format."""
        if len(self.url) > MAX_URL:
            raise RequestInvalid(f"url is longer than {MAX_URL} characters")
        try:
            parts = urlsplit(self.url)
            parts.port  # noqa: B018 - raises ValueError for a port that is not a number
        except ValueError:
            raise RequestInvalid(f"url {self.url[:200]!r} is not a URL") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise RequestInvalid(f"url must be http(s)://HOST/…, not {self.url[:200]!r}")
        if parts.username is not None or parts.password is not None:
            raise RequestInvalid("url must not carry credentials")
        unknown = sorted(set(self.types) - set(records.TYPES))
        if unknown:
            raise RequestInvalid(f"unknown event types {unknown[:5]}; known: {list(records.TYPES)}")
        if len(self.tags) > MAX_PATTERNS or any(
            not 0 < len(pattern) <= MAX_PATTERN for pattern in self.tags
        ):
            raise RequestInvalid(
                f"tags: at most {MAX_PATTERNS} patterns of 1 to {MAX_PATTERN} characters"
            )
        if self.format not in FORMATS:
            raise RequestInvalid(f"format is one of {list(FORMATS)}")


def _strings(value: object, name: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise RequestInvalid(f"{name} must be a list of strings")
    if len(value) > MAX_PATTERNS * 2:
        raise RequestInvalid(f"{name}: too many entries")
    return list(value)


def new_secret() -> str:
    """A Standard Webhooks secret: `whsec_` and the base64 of 32 random bytes."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


async def create(
    metadata: MetadataStore,
    settings: EventSettings,
    *,
    namespace: str,
    repository: str | None,
    spec: Spec,
    actor: str | None,
    resolver: Resolver = system_resolver,
) -> tuple[Webhook, str]:
    """Add an endpoint for `namespace` (or its `repository`); returns it and its secret — the
    only time the secret is given out. The caller checked the rights (may_manage). Raises
    RequestInvalid for a refused URL (the SSRF guard) or more than 20 in the scope,
    NameInvalid for a bad name."""
    validate_namespace(namespace)
    if repository is not None:
        validate_repository_name(repository)
        if repository.split("/", 1)[0] != namespace:
            raise NameInvalid(f"{repository[:300]!r} is not in namespace {namespace!r}")
    spec.check()
    try:
        await check_address(spec.url, settings.allow_private, resolver)
    except Refused as refused:
        raise RequestInvalid(f"url refused: {refused}") from None
    secret = new_secret()
    now = time.time()

    def add(connection: Connection) -> int:
        # Counted and inserted by one transaction at a time, or two could both pass the cap.
        locks.hold(connection, counters=[f"webhooks:{namespace}:{repository or ''}"])
        if len(webhook_rows.in_scope(connection, namespace, repository)) >= MAX_PER_SCOPE:
            raise RequestInvalid(f"at most {MAX_PER_SCOPE} webhooks per namespace or repository")
        return webhook_rows.insert_webhook(
            connection,
            {
                "namespace": namespace,
                "repository": repository,
                "url": spec.url,
                "secret": secret,
                "types": json.dumps(spec.types),
                "tags": json.dumps(spec.tags),
                "format": spec.format,
                "created_by": actor,
                "created_at": now,
            },
        )

    new_id = await metadata.write(add)
    webhook = Webhook(
        new_id, namespace, repository, spec.url, spec.types, spec.tags, spec.format, actor, now
    )
    return webhook, secret


async def listing(metadata: MetadataStore, namespace: str, repository: str | None) -> list[Webhook]:
    """The webhooks of a namespace (namespace-wide) or of one repository, oldest first."""
    rows = await metadata.read(lambda c: webhook_rows.in_scope(c, namespace, repository))
    return [Webhook.of_row(row) for row in rows]


async def find(metadata: MetadataStore, webhook_id: int) -> Webhook | None:
    row = await metadata.read(lambda c: webhook_rows.one(c, webhook_id))
    return Webhook.of_row(row) if row is not None else None


async def remove(metadata: MetadataStore, webhook: Webhook) -> bool:
    """Delete the webhook and its delivery history; False if it was gone already."""
    return await metadata.write(lambda c: webhook_rows.delete_webhook(c, webhook.id, webhook.key))


async def send_test(metadata: MetadataStore, webhook: Webhook, context: RequestContext) -> int:
    """Queue an `io.cangku.test` event to this one webhook, due now; returns the delivery's
    id. The event is recorded handed out already, so no other endpoint receives it."""
    now = time.time()
    event = {
        "specversion": records.SPEC_VERSION,
        "id": str(uuid.uuid4()),
        "source": f"/api/v1/webhooks/{webhook.id}",
        "type": TEST,
        "subject": webhook.scope,
        "time": datetime.fromtimestamp(now, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z"),
        "datacontenttype": "application/json",
        "data": {
            "repository": webhook.repository,
            "namespace": webhook.namespace,
            "webhook": webhook.id,
            "actor": context.caller,
            "requestId": context.request_id,
        },
    }

    def add(connection: Connection) -> int:
        row_id = event_rows.insert_event(
            connection,
            {
                "event_id": event["id"],
                "type": TEST,
                "repository": webhook.scope,
                "created_at": now,
                "payload": json.dumps(event, separators=(",", ":")),
                "fanned_out": True,
            },
        )
        return event_rows.insert_delivery(
            connection,
            {
                "event_id": row_id,
                "endpoint": webhook.key,
                "state": "pending",
                "attempts": 0,
                "created_at": now,
                "next_attempt_at": now,
            },
        )

    return await metadata.write(add)


def delivery_json(row: Row[Any]) -> dict[str, object]:
    """One delivery in the history: ids, state, attempts, the last attempt's HTTP status,
    error and latency (seconds), when queued and finished (Unix seconds)."""
    return {
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


async def history(
    metadata: MetadataStore, endpoint_key: str, limit: int
) -> list[dict[str, object]]:
    """The last `limit` deliveries to an endpoint, newest first (delivery_json)."""
    rows = await metadata.read(lambda c: event_rows.history(c, endpoint_key, limit))
    return [delivery_json(row) for row in rows]


async def redeliver(metadata: MetadataStore, endpoint_key: str, delivery_id: int) -> None:
    """Queue delivery `delivery_id` of this endpoint again, due now. Raises DeliveryUnknown
    when there is none, or it went to another endpoint."""
    now = time.time()

    def again(connection: Connection) -> bool:
        if event_rows.delivery_endpoint(connection, delivery_id) != endpoint_key:
            return False
        return event_rows.redeliver(connection, delivery_id, now)

    if not await metadata.write(again):
        raise DeliveryUnknown(f"no delivery {delivery_id} of this webhook", str(delivery_id))
