"""What the commands share: argument types, the parser helpers, opening the data directory."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

from cangku.config import Settings
from cangku.content.units import parse_duration, parse_size

log = logging.getLogger("cangku")


T = TypeVar("T")


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


# -- running against the data directory --------------------------------------------------------
async def _with_registry(settings: Settings, work: Callable[..., Awaitable[T]]) -> T:
    from cangku.app import build_registry
    from cangku.auth.accounts import Accounts

    registry = build_registry(settings)
    accounts = Accounts(
        registry.metadata,
        public_by_default=settings.auth.public_by_default,
        mirrors=settings.proxy,
    )
    try:
        return await work(registry, accounts)
    finally:
        await registry.metadata.close()


def _read_password() -> str:
    password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        raise ValueError("no password on standard input")
    return password


def _print_table(rows: Sequence[tuple[str, ...]]) -> None:
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    for row in rows:
        cells = [
            cell.ljust(width) if column == 0 else cell.rjust(width)
            for column, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        print("  ".join(cells).rstrip())
