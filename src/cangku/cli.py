"""The `cangku` command: `serve`, and the administration commands (accounts, policies, `gc`,
`usage`, `quota`) that work on the same data directory (`--data`/`--config`).

They load the settings exactly as `serve` does and are safe while the server runs: they meet
it in the database's transactions.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import sys
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

from cangku import __version__
from cangku.config import Settings, load_settings
from cangku.content.units import format_duration, format_size, parse_duration, parse_size

log = logging.getLogger("cangku")
T = TypeVar("T")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = load_settings(
            args.config,
            data=args.data,
            **(
                {
                    "listen": args.listen,
                    "auth": {"open": True} if args.open else None,
                    "tls_cert": args.tls_cert,
                    "tls_key": args.tls_key,
                }
                if args.command == "serve"
                else {}
            ),
        )
    except (OSError, ValueError) as error:
        print(f"cangku: invalid configuration: {error}", file=sys.stderr)
        return 2
    if args.command == "serve":
        return serve_forever(settings)
    from cangku.content.errors import RegistryError

    run: Run = args.run
    try:
        return asyncio.run(run(settings, args))
    except RegistryError as error:
        print(f"cangku: {error.message}", file=sys.stderr)
        return 1
    except (ValueError, OSError) as error:  # refused account changes, unreadable files
        print(f"cangku: {error}", file=sys.stderr)
        return 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cangku", description="A Docker/OCI container registry.")
    parser.add_argument("--version", action="version", version=f"cangku {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = _command(commands, "serve", "run the registry server")
    serve.add_argument("--listen", help="HOST:PORT to listen on (default 127.0.0.1:5000)")
    serve.add_argument(
        "--open", action="store_true", help="no authentication at all (trusted networks only)"
    )
    serve.add_argument("--tls-cert", type=Path, help="serve HTTPS with this certificate (PEM)")
    serve.add_argument("--tls-key", type=Path, help="the certificate's private key (PEM)")

    user = commands.add_parser("user", help="accounts").add_subparsers(dest="action", required=True)
    add = _command(user, "add", "add a user", run=user_add)
    add.add_argument("name")
    add.add_argument("--admin", action="store_true", help="may do everything")
    add.add_argument("--password-stdin", action="store_true", required=True)
    passwd = _command(user, "passwd", "change a user's password", run=user_passwd)
    passwd.add_argument("name")
    passwd.add_argument("--password-stdin", action="store_true", required=True)
    user_delete = _command(user, "del", "delete a user and its namespace's settings", run=user_del)
    user_delete.add_argument("name")
    _add_delete_repositories(user_delete)
    _command(user, "disable", "stop a user from logging in", run=user_disable).add_argument("name")
    _command(user, "enable", "let a disabled user log in again", run=user_enable).add_argument(
        "name"
    )
    _command(user, "list", "list users", run=user_list)
    _command(
        user, "import-htpasswd", "add the bcrypt entries of an htpasswd file", run=user_import
    ).add_argument("file", type=Path)

    org = commands.add_parser("org", help="organizations").add_subparsers(
        dest="action", required=True
    )
    _command(org, "add", "add an organization", run=org_add).add_argument("name")
    org_delete = _command(
        org, "del", "delete an organization and its namespace's settings", run=org_del
    )
    org_delete.add_argument("name")
    _add_delete_repositories(org_delete)
    _command(org, "list", "list organizations and members", run=org_list)
    member = org.add_parser("member", help="members").add_subparsers(dest="member", required=True)
    member_add = _command(member, "add", "add a member or change their role", run=member_set)
    member_add.add_argument("organization")
    member_add.add_argument("user")
    member_add.add_argument("--role", choices=["owner", "writer", "reader"], required=True)
    member_remove = _command(member, "remove", "remove a member", run=member_remove_run)
    member_remove.add_argument("organization")
    member_remove.add_argument("user")

    token = commands.add_parser("token", help="personal access tokens").add_subparsers(
        dest="action", required=True
    )
    create = _command(token, "create", "create a token (shown once)", run=token_create)
    create.add_argument("user")
    create.add_argument("--name", required=True)
    create.add_argument("--scope", choices=["read", "write"], required=True)
    _command(token, "list", "list a user's tokens", run=token_list).add_argument("user")
    revoke = _command(token, "revoke", "revoke a token", run=token_revoke)
    revoke.add_argument("user")
    revoke.add_argument("token", nargs="?", help="the token's name or id")
    revoke.add_argument("--all", action="store_true", help="every active token of the user")

    repo = commands.add_parser("repo", help="repositories").add_subparsers(
        dest="action", required=True
    )
    repo_set = _command(repo, "set", "set a repository's visibility", run=repo_set_run)
    repo_set.add_argument("name")
    visibility = repo_set.add_mutually_exclusive_group(required=True)
    visibility.add_argument("--public", dest="public", action="store_true")
    visibility.add_argument("--private", dest="public", action="store_false")
    repo_policy = _command(
        repo, "policy", "show or set a repository's tag policy", run=tag_policy_run
    )
    repo_policy.add_argument("name", help="repository, e.g. jimo/my-image")
    _add_policy_switches(repo_policy)
    repo_policy.set_defaults(scope="repository")

    _add_description_commands(repo)  # issue 17
    from cangku import cli_retention

    cli_retention.add_commands(commands, _command)  # issue 17

    namespace = commands.add_parser("namespace", help="namespaces").add_subparsers(
        dest="action", required=True
    )
    namespace_policy = _command(
        namespace,
        "policy",
        "show or set the tag policy every repository of a namespace inherits",
        run=tag_policy_run,
    )
    namespace_policy.add_argument("name", help="namespace, e.g. jimo")
    _add_policy_switches(namespace_policy)
    namespace_policy.set_defaults(scope="namespace")

    gc = _command(commands, "gc", "collect garbage now (safe while the server runs)", run=gc_run)
    gc.description = GC_HELP
    gc.add_argument(
        "--dry-run", action="store_true", help="print what would be deleted; delete nothing"
    )
    gc.add_argument(
        "--grace",
        type=_duration,
        help="keep unreferenced blobs younger than this (default: gc.grace, 1h)",
    )
    usage = _command(
        commands, "usage", "bytes stored per namespace and repository, and quotas", run=usage_run
    )
    usage.add_argument("--json", action="store_true", help="print the JSON of /api/v1/usage")
    quota = commands.add_parser("quota", help="storage quotas per namespace").add_subparsers(
        dest="action", required=True
    )
    quota_set = _command(
        quota, "set", "cap a namespace's deduplicated usage (e.g. 10GiB, 500MB)", run=quota_run
    )
    quota_set.add_argument("namespace")
    quota_set.add_argument("size", type=_size)
    _command(quota, "unset", "remove a namespace's quota", run=quota_run).add_argument("namespace")
    _command(quota, "list", "every quota with its usage", run=quota_run)
    return parser


GC_HELP = """\
First the retention policies delete the tags they do not keep (docs/retention.md); then
delete what no tag needs any more: blobs no manifest references (older than the grace
period), untagged manifests if gc.untagged says so, idle upload sessions (uploads.expire).
Runs beside the server on the same data directory; see docs/garbage-collection.md."""


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


Run = Callable[[Settings, argparse.Namespace], Coroutine[Any, Any, int]]


def _command(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    help_text: str,
    *,
    run: Run | None = None,
) -> argparse.ArgumentParser:
    command = commands.add_parser(name, help=help_text)
    command.add_argument("--data", type=Path, help="data directory (default ./data)")
    command.add_argument("--config", type=Path, help="YAML configuration file")
    command.set_defaults(run=run)
    return command


def _add_delete_repositories(command: argparse.ArgumentParser) -> None:
    # The next account given the name must inherit nothing; images go only when asked.
    command.add_argument(
        "--delete-repositories",
        action="store_true",
        help="also delete the namespace's repositories with images (without it, they refuse)",
    )


def _add_policy_switches(command: argparse.ArgumentParser) -> None:
    command.add_argument("--floating", choices=["on", "off"], help="move 1.9, 1, latest on pushes")
    command.add_argument(
        "--immutable-versions",
        choices=["on", "off"],
        help="refuse re-pushing an existing version tag with another digest",
    )


def _add_description_commands(
    repo: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    """`repo describe` and `repo pulls` (issue 17); the work is in cangku/cli_repository.py."""
    from cangku import cli_repository

    describe = _command(
        repo,
        "describe",
        "show or set a repository's description and Markdown overview",
        run=cli_repository.describe_run,
    )
    describe.add_argument("name")
    describe.add_argument("--description", help='one line, at most 100 characters ("" unsets)')
    describe.add_argument(
        "--overview-file", type=Path, help="Markdown file for the overview (- reads stdin)"
    )
    describe.add_argument("--clear-overview", action="store_true", help="unset the overview")
    describe.add_argument("--json", action="store_true", help="print the API's JSON")
    pulls = _command(
        repo, "pulls", "pulls of a repository, per tag and digest", run=cli_repository.pulls_run
    )
    pulls.add_argument("name")
    pulls.add_argument("--json", action="store_true", help="print the API's JSON")


# -- running against the data directory --------------------------------------------------------
async def _with_registry(settings: Settings, work: Callable[..., Awaitable[T]]) -> T:
    from cangku.app import build_registry
    from cangku.auth.accounts import Accounts

    registry = build_registry(settings)
    accounts = Accounts(registry.metadata, public_by_default=settings.auth.public_by_default)
    try:
        return await work(registry, accounts)
    finally:
        await registry.metadata.close()


def _read_password() -> str:
    password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        raise ValueError("no password on standard input")
    return password


async def user_add(settings: Settings, args: argparse.Namespace) -> int:
    password = _read_password()
    await _with_registry(settings, lambda r, a: a.add_user(args.name, password, admin=args.admin))
    print(f"added user {args.name}{' (admin)' if args.admin else ''}")
    return 0


async def user_passwd(settings: Settings, args: argparse.Namespace) -> int:
    password = _read_password()
    await _with_registry(settings, lambda r, a: a.set_password(args.name, password))
    print(f"changed the password of {args.name}")
    return 0


async def user_del(settings: Settings, args: argparse.Namespace) -> int:
    await _with_registry(
        settings,
        lambda r, a: a.delete_user(args.name, delete_repositories=args.delete_repositories),
    )
    print(f"deleted user {args.name}")
    return 0


async def user_disable(settings: Settings, args: argparse.Namespace) -> int:
    await _with_registry(settings, lambda r, a: a.set_disabled(args.name, True))
    print(f"disabled user {args.name}")
    return 0


async def user_enable(settings: Settings, args: argparse.Namespace) -> int:
    await _with_registry(settings, lambda r, a: a.set_disabled(args.name, False))
    print(f"enabled user {args.name}")
    return 0


async def user_list(settings: Settings, args: argparse.Namespace) -> int:
    users = await _with_registry(settings, lambda r, a: a.list_users())
    for user in users:
        flags = [flag for flag, on in (("admin", user.is_admin), ("disabled", user.disabled)) if on]
        print(f"{user.name}{'  (' + ', '.join(flags) + ')' if flags else ''}")
    return 0


async def user_import(settings: Settings, args: argparse.Namespace) -> int:
    text = args.file.read_text()
    added, skipped = await _with_registry(settings, lambda r, a: a.import_htpasswd(text))
    for name in added:
        print(f"added user {name}")
    for reason in skipped:
        print(f"skipped {reason}", file=sys.stderr)
    return 0 if not skipped else 1


async def org_add(settings: Settings, args: argparse.Namespace) -> int:
    await _with_registry(settings, lambda r, a: a.add_organization(args.name))
    print(f"added organization {args.name}")
    return 0


async def org_del(settings: Settings, args: argparse.Namespace) -> int:
    await _with_registry(
        settings,
        lambda r, a: a.delete_organization(args.name, delete_repositories=args.delete_repositories),
    )
    print(f"deleted organization {args.name}")
    return 0


async def org_list(settings: Settings, args: argparse.Namespace) -> int:
    organizations = await _with_registry(settings, lambda r, a: a.list_organizations())
    for name, members in organizations.items():
        print(name)
        for user, role in sorted(members.items()):
            print(f"  {user}  {role}")
    return 0


async def member_set(settings: Settings, args: argparse.Namespace) -> int:
    await _with_registry(
        settings, lambda r, a: a.set_member(args.organization, args.user, args.role)
    )
    print(f"{args.user} is now {args.role} of {args.organization}")
    return 0


async def member_remove_run(settings: Settings, args: argparse.Namespace) -> int:
    await _with_registry(settings, lambda r, a: a.set_member(args.organization, args.user, None))
    print(f"removed {args.user} from {args.organization}")
    return 0


async def token_create(settings: Settings, args: argparse.Namespace) -> int:
    token = await _with_registry(
        settings, lambda r, a: a.create_token(args.user, args.name, args.scope)
    )
    print(token)
    print("Use it as the password of `docker login`. It is shown only this once.", file=sys.stderr)
    return 0


async def token_list(settings: Settings, args: argparse.Namespace) -> int:
    import datetime

    def when(moment: float | None) -> str:
        if moment is None:
            return "never"
        return datetime.datetime.fromtimestamp(moment, datetime.UTC).strftime("%Y-%m-%d %H:%M")

    tokens = await _with_registry(settings, lambda r, a: a.list_tokens(args.user))
    for token in tokens:
        state = f"revoked {when(token.revoked_at)}" if token.revoked_at else "active"
        print(
            f"{token.id}  {token.name}  {token.scope}  created {when(token.created_at)}  "
            f"last used {when(token.last_used_at)}  {state}"
        )
    return 0


async def token_revoke(settings: Settings, args: argparse.Namespace) -> int:
    if args.all == (args.token is not None):
        print("name one token, or give --all", file=sys.stderr)
        return 2
    if args.all:
        count = await _with_registry(settings, lambda r, a: a.revoke_all_tokens(args.user))
        print(f"revoked {count} tokens of {args.user}")
        return 0
    await _with_registry(settings, lambda r, a: a.revoke_token(args.user, args.token))
    print(f"revoked token {args.token} of {args.user}")
    return 0


async def repo_set_run(settings: Settings, args: argparse.Namespace) -> int:
    await _with_registry(settings, lambda r, a: a.set_public(args.name, args.public))
    print(f"{args.name} is now {'public' if args.public else 'private'}")
    return 0


async def tag_policy_run(settings: Settings, args: argparse.Namespace) -> int:
    def switch(value: str | None) -> bool | None:
        return None if value is None else value == "on"

    policy = await _with_registry(
        settings,
        lambda r, a: r.set_tag_policy(
            args.scope,
            args.name,
            floating=switch(args.floating),
            immutable_versions=switch(args.immutable_versions),
        ),
    )
    print(f"{args.scope} {args.name}")
    print(f"  floating tags:      {'on' if policy.floating else 'off'}")
    print(f"  immutable versions: {'on' if policy.immutable_versions else 'off'}")
    return 0


async def gc_run(settings: Settings, args: argparse.Namespace) -> int:
    dry_run, grace = args.dry_run, args.grace
    from cangku import cli_retention
    from cangku.app import build_collector, build_registry

    if grace is not None:
        settings = settings.model_copy(
            update={"gc": settings.gc.model_copy(update={"grace": grace})}
        )
    registry = build_registry(settings)
    try:
        # Issue 17: the retention policies first (a dry run lists what they would delete).
        await cli_retention.retain_before_gc(registry.metadata, dry_run=dry_run)
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


async def usage_run(settings: Settings, args: argparse.Namespace) -> int:
    as_json = args.json
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


async def quota_run(settings: Settings, args: argparse.Namespace) -> int:
    action = args.action
    namespace: str | None = getattr(args, "namespace", None)
    size: int | None = getattr(args, "size", None)
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
    import os

    import uvicorn

    from cangku.app import create_app
    from cangku.observability import configure_logging
    from cangku.server import server_config
    from cangku.tracing import configure_tracing

    configure_logging(settings)
    if settings.auth.open and not settings.listens_on_loopback():
        log.warning(
            "!!! cangku listens on %s WITHOUT AUTHENTICATION (--open): anyone who can reach it "
            "may push, pull and delete. Use it only on a trusted network. !!!",
            settings.listen,
        )
    try:
        tracing = configure_tracing(os.environ)
    except ValueError as error:
        print(f"cangku: invalid configuration: {error}", file=sys.stderr)
        return 2
    app = create_app(settings, tracing=tracing)
    scheme = "https" if settings.tls_cert else "http"
    log.info(
        "cangku %s serving on %s://%s with data in %s%s",
        __version__,
        scheme,
        settings.listen,
        settings.data,
        " (no authentication)" if settings.auth.open else "",
    )
    server = uvicorn.Server(server_config(app, settings))
    # Ctrl-C: uvicorn shuts down gracefully, then re-raises the signal; nothing more to do.
    with contextlib.suppress(KeyboardInterrupt):
        server.run()
    # 3, as uvicorn.run says it: the application's startup failed. (A port already in use
    # exits with 3 from inside uvicorn.)
    return 0 if server.started else 3
