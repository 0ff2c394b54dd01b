"""The `cangku` command: `serve`, and `gc`, `usage`, `quota` on the same data directory.

The maintenance commands load the settings exactly as `serve` does (`--config`, `CANGKU_*`,
`--data`) and are safe while the server runs: they meet it in the database's transactions.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from cangku import __version__
from cangku.config import Settings, load_settings
from cangku.content.units import format_duration, format_size, parse_duration, parse_size

log = logging.getLogger("cangku")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cangku", description="A Docker/OCI container registry.")
    parser.add_argument("--version", action="version", version=f"cangku {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the registry server")
    serve.add_argument("--listen", help="HOST:PORT to listen on (default 127.0.0.1:5000)")
    serve.add_argument("--data", type=Path, help="data directory (default ./data)")
    serve.add_argument("--config", type=Path, help="YAML configuration file")
    serve.add_argument(
        "--open",
        action="store_true",
        default=None,
        help="no authentication at all (trusted networks only)",
    )

    gc = commands.add_parser(
        "gc", help="collect garbage now (safe while the server runs)", description=GC_HELP
    )
    _add_data_options(gc)
    gc.add_argument(
        "--dry-run", action="store_true", help="print what would be deleted; delete nothing"
    )
    gc.add_argument(
        "--grace",
        type=_duration,
        help="keep unreferenced blobs younger than this (default: gc.grace, 1h)",
    )

    usage = commands.add_parser(
        "usage", help="bytes stored per namespace and repository, and quotas"
    )
    _add_data_options(usage)
    usage.add_argument("--json", action="store_true", help="print the JSON of /api/v1/usage")

    quota = commands.add_parser("quota", help="storage quotas per namespace")
    quota_commands = quota.add_subparsers(dest="quota_command", required=True)
    quota_set = quota_commands.add_parser(
        "set", help="cap a namespace's deduplicated usage (e.g. 10GiB, 500MB)"
    )
    quota_set.add_argument("namespace")
    quota_set.add_argument("size", type=_size)
    quota_unset = quota_commands.add_parser("unset", help="remove a namespace's quota")
    quota_unset.add_argument("namespace")
    quota_list = quota_commands.add_parser("list", help="every quota with its usage")
    for command in (quota_set, quota_unset, quota_list):
        _add_data_options(command)

    args = parser.parse_args(argv)
    if args.command == "serve":
        try:
            settings = load_settings(
                args.config,
                listen=args.listen,
                data=args.data,
                auth={"open": True} if args.open else None,
            )
        except (OSError, ValueError) as error:
            print(f"cangku: invalid configuration: {error}", file=sys.stderr)
            return 2
        return serve_forever(settings)
    try:
        settings = load_settings(args.config, data=args.data)
    except (OSError, ValueError) as error:
        print(f"cangku: invalid configuration: {error}", file=sys.stderr)
        return 2
    if args.command == "gc":
        return asyncio.run(collect_garbage(settings, dry_run=args.dry_run, grace=args.grace))
    if args.command == "usage":
        return asyncio.run(print_usage(settings, as_json=args.json))
    if args.command == "quota":
        return asyncio.run(
            manage_quota(
                settings,
                args.quota_command,
                getattr(args, "namespace", None),
                getattr(args, "size", None),
            )
        )
    return 2


GC_HELP = """\
Delete what no tag needs any more: blobs no manifest references (older than the grace
period), untagged manifests if gc.untagged says so, idle upload sessions (uploads.expire).
Runs beside the server on the same data directory; see docs/garbage-collection.md."""


def _add_data_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, help="data directory (default ./data)")
    parser.add_argument("--config", type=Path, help="YAML configuration file")


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


async def collect_garbage(settings: Settings, *, dry_run: bool, grace: float | None) -> int:
    from cangku.app import build_collector, build_registry

    if grace is not None:
        settings = settings.model_copy(
            update={"gc": settings.gc.model_copy(update={"grace": grace})}
        )
    registry = build_registry(settings)
    try:
        report = await build_collector(settings, registry).collect(dry_run=dry_run)
    finally:
        await registry.metadata.close()
    if dry_run:
        for manifest in report.manifests:
            print(f"manifest  {manifest.repository}@{manifest.digest}  {manifest.size} bytes")
        for blob in report.blobs:
            kind = "file" if blob.orphan else "blob"
            print(f"{kind}      {blob.digest}  {blob.size} bytes")
        for upload_id in report.uploads:
            print(f"upload    {upload_id}")
    print(f"grace period {format_duration(settings.gc.grace)}: {report.summary()}")
    if dry_run:
        print(f"would free {report.freed_bytes} bytes ({format_size(report.freed_bytes)})")
    return 0


async def print_usage(settings: Settings, *, as_json: bool) -> int:
    from cangku.app import build_registry

    registry = build_registry(settings)
    try:
        report = await registry.usage()
    finally:
        await registry.metadata.close()
    if as_json:
        print(json.dumps(report.to_json(), indent=2))
        return 0
    header = ("NAMESPACE / REPOSITORY", "MANIFESTS", "TAGS", "BLOBS", "DEDUPLICATED", "APPARENT")
    rows = [(*header, "QUOTA")]
    for namespace in report.namespaces:
        quota = "-"
        if namespace.quota_bytes is not None:
            used = namespace.deduplicated_bytes / max(namespace.quota_bytes, 1) * 100
            quota = f"{format_size(namespace.quota_bytes)} ({used:.0f}% used)"
        rows.append(
            (
                namespace.namespace,
                str(sum(r.manifests for r in namespace.repositories)),
                str(sum(r.tags for r in namespace.repositories)),
                "",
                format_size(namespace.deduplicated_bytes),
                format_size(namespace.apparent_bytes),
                quota,
            )
        )
        for repository in namespace.repositories:
            rows.append(
                (
                    f"  {repository.repository}",
                    str(repository.manifests),
                    str(repository.tags),
                    str(repository.blobs),
                    format_size(repository.deduplicated_bytes),
                    format_size(repository.apparent_bytes),
                    "",
                )
            )
    rows.append(
        (
            "total",
            "",
            "",
            "",
            format_size(report.deduplicated_bytes),
            format_size(report.apparent_bytes),
            f"blob store {format_size(report.blob_store_bytes)}",
        )
    )
    _print_table(rows)
    return 0


async def manage_quota(
    settings: Settings, action: str, namespace: str | None, size: int | None
) -> int:
    from cangku.app import build_registry
    from cangku.content.errors import RegistryError

    registry = build_registry(settings)
    try:
        if action == "set":
            assert namespace is not None and size is not None
            quota = await registry.set_quota(namespace, size)
            print(
                f"quota of {quota.namespace}: {format_size(quota.limit_bytes)} "
                f"({quota.limit_bytes} bytes); {format_size(quota.usage_bytes)} used"
            )
        elif action == "unset":
            assert namespace is not None
            if not await registry.unset_quota(namespace):
                print(f"cangku: {namespace} has no quota", file=sys.stderr)
                return 1
            print(f"quota of {namespace} removed")
        else:
            rows = [("NAMESPACE", "QUOTA", "USED", "QUOTA BYTES", "USED BYTES")]
            for quota in await registry.quotas():
                rows.append(
                    (
                        quota.namespace,
                        format_size(quota.limit_bytes),
                        format_size(quota.usage_bytes),
                        str(quota.limit_bytes),
                        str(quota.usage_bytes),
                    )
                )
            _print_table(rows)
    except RegistryError as error:
        print(f"cangku: {error.message}", file=sys.stderr)
        return 2
    finally:
        await registry.metadata.close()
    return 0


def _print_table(rows: Sequence[tuple[str, ...]]) -> None:
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    for row in rows:
        cells = [
            cell.ljust(width) if column == 0 else cell.rjust(width)
            for column, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        print("  ".join(cells).rstrip())


def serve_forever(settings: Settings) -> int:
    import uvicorn

    from cangku.app import create_app

    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    if not settings.listens_on_loopback():
        # Accounts are not built yet: every listener is unauthenticated.
        log.warning(
            "!!! cangku listens on %s WITHOUT AUTHENTICATION: anyone who can reach it may "
            "push, pull and delete. Use it only on a trusted network. !!!",
            settings.listen,
        )
    app = create_app(settings)
    log.info(
        "cangku %s serving on http://%s with data in %s",
        __version__,
        settings.listen,
        settings.data,
    )
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level=settings.log_level,
        lifespan="on",
    )
    return 0
