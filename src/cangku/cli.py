"""The `cangku` command: `serve`, and the administration commands that work on the same
data directory (`--data`/`--config`), also while the server runs."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from cangku import __version__
from cangku.config import Settings, load_settings

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
    _command(user, "del", "delete a user", run=user_del).add_argument("name")
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
    _command(org, "del", "delete an organization", run=org_del).add_argument("name")
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
    revoke.add_argument("token", help="the token's name or id")

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
    return parser


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


def _add_policy_switches(command: argparse.ArgumentParser) -> None:
    command.add_argument("--floating", choices=["on", "off"], help="move 1.9, 1, latest on pushes")
    command.add_argument(
        "--immutable-versions",
        choices=["on", "off"],
        help="refuse re-pushing an existing version tag with another digest",
    )


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
    await _with_registry(settings, lambda r, a: a.delete_user(args.name))
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
    await _with_registry(settings, lambda r, a: a.delete_organization(args.name))
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


def serve_forever(settings: Settings) -> int:
    import uvicorn

    from cangku.app import create_app

    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    if settings.auth.open and not settings.listens_on_loopback():
        log.warning(
            "!!! cangku listens on %s WITHOUT AUTHENTICATION (--open): anyone who can reach it "
            "may push, pull and delete. Use it only on a trusted network. !!!",
            settings.listen,
        )
    app = create_app(settings)
    scheme = "https" if settings.tls_cert else "http"
    log.info(
        "cangku %s serving on %s://%s with data in %s%s",
        __version__,
        scheme,
        settings.listen,
        settings.data,
        " (no authentication)" if settings.auth.open else "",
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
        ssl_certfile=str(settings.tls_cert) if settings.tls_cert else None,
        ssl_keyfile=str(settings.tls_key) if settings.tls_key else None,
    )
    return 0
