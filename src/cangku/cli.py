"""The `cangku` command: `serve`, and the administration commands that work on the same
data directory, also while the server runs."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from cangku import __version__
from cangku.config import Settings, load_settings

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

    repo = commands.add_parser("repo", help="repository settings")
    repo_commands = repo.add_subparsers(dest="repo_command", required=True)
    repo_policy = repo_commands.add_parser(
        "policy", help="show or set a repository's tag policy (floating tags, immutable versions)"
    )
    repo_policy.add_argument("name", help="repository, e.g. jimo/my-image")
    _add_policy_switches(repo_policy)

    namespace = commands.add_parser("namespace", help="namespace settings")
    namespace_commands = namespace.add_subparsers(dest="namespace_command", required=True)
    namespace_policy = namespace_commands.add_parser(
        "policy", help="show or set the tag policy every repository of a namespace inherits"
    )
    namespace_policy.add_argument("name", help="namespace, e.g. jimo")
    _add_policy_switches(namespace_policy)

    args = parser.parse_args(argv)
    if args.command in ("repo", "namespace"):
        settings = _settings_or_exit(args)
        if settings is None:
            return 2
        scope = "repository" if args.command == "repo" else "namespace"
        return asyncio.run(_tag_policy(settings, scope, args))
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
    return 2


def _add_policy_switches(command: argparse.ArgumentParser) -> None:
    command.add_argument("--floating", choices=["on", "off"], help="move 1.9, 1, latest on pushes")
    command.add_argument(
        "--immutable-versions",
        choices=["on", "off"],
        help="refuse re-pushing an existing version tag with another digest",
    )
    command.add_argument("--data", type=Path, help="data directory (default ./data)")
    command.add_argument("--config", type=Path, help="YAML configuration file")


def _settings_or_exit(args: argparse.Namespace) -> Settings | None:
    try:
        return load_settings(args.config, data=args.data)
    except (OSError, ValueError) as error:
        print(f"cangku: invalid configuration: {error}", file=sys.stderr)
        return None


async def _tag_policy(settings: Settings, scope: str, args: argparse.Namespace) -> int:
    from cangku.app import build_registry
    from cangku.content.errors import RegistryError

    def switch(value: str | None) -> bool | None:
        return None if value is None else value == "on"

    registry = build_registry(settings)
    try:
        policy = await registry.set_tag_policy(
            scope,
            args.name,
            floating=switch(args.floating),
            immutable_versions=switch(args.immutable_versions),
        )
    except RegistryError as error:
        print(f"cangku: {error.message}", file=sys.stderr)
        return 2
    finally:
        await registry.metadata.close()
    print(f"{scope} {args.name}")
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
