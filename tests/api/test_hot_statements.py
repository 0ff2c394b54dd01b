"""The statements of the busiest requests are built once, not per request.

Building a SQLAlchemy statement (and its cache key) costs more than running it on SQLite:
~35 µs against ~15 µs for a one-row read (docs/performance.md, "Per-request CPU"). A push
runs its statements for every blob, so each is built once at module level with `bindparam`
(STYLE.md). This test catches a statement built anew per request: the second request of a
kind may execute only statement objects the first one executed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from sqlalchemy import event
from sqlalchemy.engine import Connection
from sqlalchemy.sql import ClauseElement

from cangku.registry import Registry
from tests.api.helpers import OCI_MANIFEST, push_image, sha256

Request = Callable[[httpx.AsyncClient, int], Awaitable[None]]


@contextmanager
def executed_statements(registry: Registry) -> Iterator[list[ClauseElement]]:
    statements: list[ClauseElement] = []

    def record(_connection: Any, clause: Any, *_: Any) -> None:
        if isinstance(clause, ClauseElement):
            statements.append(clause)  # Held: no later statement can reuse its id.

    engine = registry.metadata.engine
    event.listen(engine, "before_execute", record)
    try:
        yield statements
    finally:
        event.remove(engine, "before_execute", record)


async def upload_then_put(client: httpx.AsyncClient, index: int) -> None:
    data = os.urandom(100)
    started = await client.post("/v2/jimo/app/blobs/uploads/")
    assert started.status_code == 202
    finished = await client.put(
        started.headers["Location"], params={"digest": sha256(data)}, content=data
    )
    assert finished.status_code == 201, finished.text


async def chunked(client: httpx.AsyncClient, index: int) -> None:
    data = os.urandom(300)
    started = await client.post("/v2/jimo/app/blobs/uploads/")
    patched = await client.patch(
        started.headers["Location"],
        content=data[:200],
        headers={"Content-Range": "0-199", "Content-Type": "application/octet-stream"},
    )
    assert patched.status_code == 202
    finished = await client.put(
        patched.headers["Location"], params={"digest": sha256(data)}, content=data[200:]
    )
    assert finished.status_code == 201, finished.text


async def single_post(client: httpx.AsyncClient, index: int) -> None:
    data = os.urandom(100)
    response = await client.post(
        "/v2/jimo/app/blobs/uploads/", params={"digest": sha256(data)}, content=data
    )
    assert response.status_code == 201, response.text


async def manifest_put(client: httpx.AsyncClient, index: int) -> None:
    manifest = (await client.get("/v2/jimo/app/manifests/base")).content
    document = json.loads(manifest)
    document["annotations"] = {"index": str(index)}
    response = await client.put(
        f"/v2/jimo/app/manifests/build-{index}",
        content=json.dumps(document).encode(),
        headers={"Content-Type": OCI_MANIFEST},
    )
    assert response.status_code == 201, response.text


async def manifest_get(client: httpx.AsyncClient, index: int) -> None:
    # A write first: the read cache is empty again, so the GET runs its statements.
    await single_post(client, index)
    response = await client.get("/v2/jimo/app/manifests/base", headers={"Accept": OCI_MANIFEST})
    assert response.status_code == 200


async def blob_head(client: httpx.AsyncClient, index: int) -> None:
    await single_post(client, index)
    manifest = json.loads((await client.get("/v2/jimo/app/manifests/base")).content)
    response = await client.head(f"/v2/jimo/app/blobs/{manifest['config']['digest']}")
    assert response.status_code == 200


@pytest.mark.parametrize(
    "request_kind", [upload_then_put, chunked, single_post, manifest_put, manifest_get, blob_head]
)
async def test_the_statements_of_a_request_are_built_once(
    client: httpx.AsyncClient, registry: Registry, request_kind: Request
) -> None:
    await push_image(client, "jimo/app", "base")
    await request_kind(client, 0)  # The first of its kind may create the repository's rows.
    with executed_statements(registry) as first:
        await request_kind(client, 1)
    with executed_statements(registry) as second:
        await request_kind(client, 2)
    assert second, "the request ran no statement: the test would prove nothing"
    built_anew = [str(s) for s in second if not any(s is known for known in first)]
    assert built_anew == []


@contextmanager
def through_sqlalchemy() -> Iterator[list[str]]:
    """The statements run through `Connection.execute`/`scalar`/`scalars` in the block."""
    seen: list[str] = []
    originals = {name: getattr(Connection, name) for name in ("execute", "scalar", "scalars")}

    def recording(name: str) -> Callable[..., Any]:
        def run(self: Connection, statement: Any, *arguments: Any, **options: Any) -> Any:
            seen.append(" ".join(str(statement).split()))
            return originals[name](self, statement, *arguments, **options)

        return run

    for name in originals:
        setattr(Connection, name, recording(name))
    try:
        yield seen
    finally:
        for name, original in originals.items():
            setattr(Connection, name, original)


@pytest.mark.parametrize(
    "request_kind", [upload_then_put, chunked, single_post, manifest_put, manifest_get, blob_head]
)
async def test_the_statements_of_a_request_run_on_the_drivers_cursor(
    client: httpx.AsyncClient, registry: Registry, request_kind: Request
) -> None:
    """Each of SQLAlchemy's executions costs 7-20 µs more than the statement
    (metadata/prepared.py): the busiest requests run theirs through `Prepared`."""
    await push_image(client, "jimo/app", "base")
    await request_kind(client, 0)  # The first of its kind may create the repository's rows.
    with through_sqlalchemy() as seen:
        await request_kind(client, 1)
    assert seen == []
