"""`cangku repo describe` and `cangku repo pulls` (issue 17): a repository's texts and pulls,
on the same data directory as the server (safe while it runs)."""

from __future__ import annotations

import argparse
import json
import sys

from cangku.config import Settings
from cangku.registry.descriptions import (
    RepositoryDescription,
    clean_description,
    clean_overview,
    describe,
    set_description,
)

MAX_OVERVIEW_FILE_BYTES = 128 * 1024


async def describe_run(settings: Settings, args: argparse.Namespace) -> int:
    from cangku.app import build_registry

    overview_text: str | None = None
    if args.overview_file is not None:
        if str(args.overview_file) == "-":
            overview_text = sys.stdin.read(MAX_OVERVIEW_FILE_BYTES + 1)
        else:
            with args.overview_file.open(encoding="utf-8") as file:
                overview_text = file.read(MAX_OVERVIEW_FILE_BYTES + 1)
        if len(overview_text.encode()) > MAX_OVERVIEW_FILE_BYTES:
            raise ValueError("the overview file is larger than 128 KiB")
    changing = args.description is not None or overview_text is not None or args.clear_overview
    registry = build_registry(settings)
    try:
        about = await describe(registry, args.name)
        if changing:
            stored_by_owner = about.source == "owner"
            description = (
                clean_description(args.description)
                if args.description is not None
                else (about.description if stored_by_owner else None)
            )
            if args.clear_overview:
                overview = None
            elif overview_text is not None:
                overview = clean_overview(overview_text)
            else:
                overview = about.overview
            about = await set_description(registry, args.name, description, overview, None)
    finally:
        await registry.metadata.close()
    if args.json:
        print(json.dumps(about.to_json(), indent=2))
    else:
        _print(about)
    return 0


def _print(about: RepositoryDescription) -> None:
    source = {"owner": "set by its owners", "image": "from the newest image"}.get(
        about.source or "", "not set"
    )
    print(f"{about.repository}: {about.description or '(no description)'}  [{source}]")
    for label, value in (
        ("source", about.image_source),
        ("url", about.image_url),
        ("licenses", about.licenses),
    ):
        if value:
            print(f"  {label}: {value}")
    if about.overview:
        print()
        print(about.overview)


async def pulls_run(settings: Settings, args: argparse.Namespace) -> int:
    from cangku.app import build_registry
    from cangku.web.site import format_time

    registry = build_registry(settings)
    try:
        await describe(registry, args.name)  # NAME_UNKNOWN for an unknown repository
        pulls = await registry.pulls.repository(args.name)
    finally:
        await registry.metadata.close()
    if args.json:
        print(json.dumps(pulls.to_json(), indent=2))
        return 0
    print(f"{args.name}: {pulls.total.pulls} pulls, last {format_time(pulls.total.last_pulled_at)}")
    for tag, count in sorted(pulls.tags.items()):
        print(f"  {tag}\t{count.pulls}\t{format_time(count.last_pulled_at)}")
    for digest, count in sorted(pulls.digests.items()):
        print(f"  {digest}\t{count.pulls}\t{format_time(count.last_pulled_at)}")
    return 0
