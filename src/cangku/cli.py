"""The `cangku` command: `cangku serve` (more subcommands come with accounts and GC)."""

from __future__ import annotations

import argparse
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
    return 2


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
