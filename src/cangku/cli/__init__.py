"""The `cangku` command: `serve`, and the administration commands (accounts, policies, `gc`,
`usage`, `quota`) that work on the same data directory (`--data`/`--config`).

They load the settings exactly as `serve` does and are safe while the server runs: they meet
it in the database's transactions. One module per command group; `parser.py` wires them.
"""

from __future__ import annotations

import asyncio
import sys

from cangku.cli.common import Run
from cangku.cli.parser import build_parser
from cangku.cli.serve import serve_forever
from cangku.config import load_settings


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
