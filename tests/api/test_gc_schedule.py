"""The server collects garbage on its schedule (`gc.interval`), and not at all with 0."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import httpx
from starlette.types import Message

from cangku.app import create_app
from cangku.config import Settings
from cangku.registry import Registry
from tests.api.helpers import (
    blob_files,
    push_blob,
)


async def serve_for(settings: Settings, registry: Registry, seconds: float) -> None:
    """Run the app's lifespan (start-up, `seconds` of serving, shut-down) as a server would."""
    app = create_app(settings, registry)
    inbox: asyncio.Queue[Message] = asyncio.Queue()
    outbox: asyncio.Queue[Message] = asyncio.Queue()
    await inbox.put({"type": "lifespan.startup"})
    server = asyncio.ensure_future(
        app({"type": "lifespan", "asgi": {"version": "3.0"}}, inbox.get, outbox.put)
    )
    assert (await outbox.get())["type"] == "lifespan.startup.complete"
    await asyncio.sleep(seconds)
    await inbox.put({"type": "lifespan.shutdown"})
    assert (await outbox.get())["type"] == "lifespan.shutdown.complete"
    await server


async def test_the_server_collects_on_its_interval(
    client: httpx.AsyncClient, registry: Registry, data_dir: Path
) -> None:
    digest = await push_blob(client, "jimo/app", os.urandom(100))
    settings = Settings(data=data_dir, gc={"interval": "50ms", "grace": "0"})

    await serve_for(settings, registry, 0.5)

    assert digest not in blob_files(data_dir)


async def test_an_interval_of_zero_turns_the_schedule_off(
    client: httpx.AsyncClient, registry: Registry, data_dir: Path
) -> None:
    digest = await push_blob(client, "jimo/app", os.urandom(100))
    settings = Settings(data=data_dir, gc={"interval": "0", "grace": "0"})

    await serve_for(settings, registry, 0.3)

    assert digest in blob_files(data_dir)
