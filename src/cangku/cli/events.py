"""`cangku webhooks ...` (issue 16): the webhooks of namespaces and repositories, for the
server's administrator (who holds the data directory): create, list, delete, the delivery
history, a test event, redeliver. The secret is printed once, by `create`. See
docs/events.md."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from cangku.config import Settings
from cangku.content.errors import WebhookUnknown
from cangku.events import webhooks
from cangku.events.webhooks import Spec, Webhook
from cangku.registry.context import RequestContext


def add_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    command: Callable[..., argparse.ArgumentParser],
) -> None:
    group = commands.add_parser(
        "webhooks", help="webhooks of namespaces and repositories (events)"
    ).add_subparsers(dest="action", required=True)
    create = command(group, "create", "add a webhook; prints its secret, once", run=create_run)
    _scope(create)
    create.add_argument("--url", required=True, help="https://… the receiver")
    create.add_argument(
        "--type",
        dest="types",
        action="append",
        default=[],
        metavar="TYPE",
        help="an event type to send (repeat; default: every type but io.cangku.pulled)",
    )
    create.add_argument(
        "--tag",
        dest="tags",
        action="append",
        default=[],
        metavar="PATTERN",
        help="send tag events only for tags matching (fnmatch; repeat)",
    )
    create.add_argument("--format", choices=webhooks.FORMATS, default="cloudevents")
    listing = command(group, "list", "the webhooks of a namespace or repository", run=list_run)
    _scope(listing)
    delete = command(group, "delete", "remove a webhook and its history", run=delete_run)
    delete.add_argument("id", type=int)
    history = command(group, "history", "a webhook's last deliveries", run=history_run)
    history.add_argument("id", type=int)
    history.add_argument("--limit", type=int, default=20, choices=range(1, 101), metavar="N")
    history.add_argument("--json", action="store_true", help="as JSON")
    test = command(group, "test", "queue a test event to a webhook", run=test_run)
    test.add_argument("id", type=int)
    again = command(group, "redeliver", "queue a delivery again", run=redeliver_run)
    again.add_argument("id", type=int)
    again.add_argument("delivery", type=int)


def _scope(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--namespace", metavar="NAMESPACE")
    where.add_argument("--repository", metavar="NAME")


def _where(args: argparse.Namespace) -> tuple[str, str | None]:
    if args.repository:
        return args.repository.split("/", 1)[0], args.repository
    return args.namespace, None


async def _with_metadata(settings: Settings, work: Callable[[Any], Any]) -> Any:
    from cangku.app import build_registry

    registry = build_registry(settings)
    try:
        return await work(registry.metadata)
    finally:
        await registry.metadata.close()


def _line(webhook: Webhook) -> str:
    filters = []
    if webhook.types:
        filters.append("types " + ",".join(webhook.types))
    if webhook.tags:
        filters.append("tags " + ",".join(webhook.tags))
    return f"{webhook.id}  {webhook.scope}  {webhook.url}  {webhook.format}" + (
        f"  ({'; '.join(filters)})" if filters else ""
    )


async def create_run(settings: Settings, args: argparse.Namespace) -> int:
    namespace, repository = _where(args)
    spec = Spec(url=args.url, types=args.types, tags=args.tags, format=args.format)
    webhook, secret = await _with_metadata(
        settings,
        lambda metadata: webhooks.create(
            metadata,
            settings.events,
            namespace=namespace,
            repository=repository,
            spec=spec,
            actor=None,
        ),
    )
    print(_line(webhook))
    print(f"secret: {secret}")
    print("Keep the secret now: it is not shown again.")
    return 0


async def list_run(settings: Settings, args: argparse.Namespace) -> int:
    namespace, repository = _where(args)
    found = await _with_metadata(
        settings, lambda metadata: webhooks.listing(metadata, namespace, repository)
    )
    if not found:
        print("no webhooks")
    for webhook in found:
        print(_line(webhook))
    return 0


async def _find(metadata: Any, webhook_id: int) -> Webhook:
    found = await webhooks.find(metadata, webhook_id)
    if found is None:
        raise WebhookUnknown(f"no webhook {webhook_id}", str(webhook_id))
    return found


async def delete_run(settings: Settings, args: argparse.Namespace) -> int:
    async def work(metadata: Any) -> None:
        await webhooks.remove(metadata, await _find(metadata, args.id))

    await _with_metadata(settings, work)
    print(f"webhook {args.id} deleted")
    return 0


async def history_run(settings: Settings, args: argparse.Namespace) -> int:
    async def work(metadata: Any) -> list[dict[str, object]]:
        found = await _find(metadata, args.id)
        return await webhooks.history(metadata, found.key, args.limit)

    deliveries = await _with_metadata(settings, work)
    if args.json:
        print(json.dumps(deliveries, indent=2))
        return 0
    if not deliveries:
        print("no deliveries")
    for row in deliveries:
        latency = f"{row['latency'] * 1000:.0f} ms" if row["latency"] is not None else "-"
        print(
            f"{row['id']}  {row['type']}  {row['state']}  attempts {row['attempts']}  "
            f"status {row['status'] or '-'}  {latency}"
            + (f"  {row['error']}" if row["error"] else "")
        )
    return 0


async def test_run(settings: Settings, args: argparse.Namespace) -> int:
    async def work(metadata: Any) -> int:
        found = await _find(metadata, args.id)
        return await webhooks.send_test(metadata, found, RequestContext())

    delivery = await _with_metadata(settings, work)
    print(f"test event queued as delivery {delivery} (a running server sends it)")
    return 0


async def redeliver_run(settings: Settings, args: argparse.Namespace) -> int:
    async def work(metadata: Any) -> None:
        found = await _find(metadata, args.id)
        await webhooks.redeliver(metadata, found.key, args.delivery)

    await _with_metadata(settings, work)
    print(f"delivery {args.delivery} queued again")
    return 0
