"""Issue 20: a push must not cost more with every version the repository already has.

Each step a client can take on a version repository (push a release, an old patch, a
pre-release, a floating tag; delete a version; read the version tree and a tag's history) is
measured at 600 and at 3,000 existing versions (`SMALL`, `LARGE`), counting what the
database does: the SQL statements, and the work inside them (SQLite: virtual-machine
instructions, which grow with the rows a statement scans; PostgreSQL: the rows the statements
return). Both must stay flat.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from sqlalchemy import event

from cangku.registry import Registry
from cangku.registry.browse import UsageCache
from cangku.registry.context import IN_PROCESS
from tests.api.helpers import OCI_MANIFEST, push_image

REPO = "jimo/versions"
SMALL, LARGE = 600, 3_000
# Steps whose work may grow, and why: only their statement count is checked. (None now:
# the repository page pages its tag table and reuses its usage figures, registry/browse.py.)
COUNTS_ALL: set[str] = set()
# SQLite calls the progress handler every this many virtual-machine instructions.
STEP = 20


def version(index: int) -> str:
    """0.0.0, 0.0.1, … 0.0.9, 0.1.0, … 1.9.9, … — ten patches a minor, ten minors a major."""
    return f"{index // 100}.{index // 10 % 10}.{index % 10}"


@dataclass
class Work:
    statements: int = 0
    # What the database server executes: an executemany's rows are one execution each on
    # PostgreSQL (psycopg), a multi-row VALUES list is one.
    executions: int = 0
    # SQLite: progress-handler calls (STEP instructions each); PostgreSQL: rows returned.
    effort: int = 0
    texts: list[str] = field(default_factory=list)


class Meter:
    """Counts what the metadata database does while `measuring` is set."""

    def __init__(self, registry: Registry) -> None:
        self.engine = registry.metadata.engine
        self.is_sqlite = registry.metadata.is_sqlite
        self.current: Work | None = None
        event.listen(self.engine, "before_cursor_execute", self._before)
        event.listen(self.engine, "after_cursor_execute", self._after)

    def close(self) -> None:
        event.remove(self.engine, "before_cursor_execute", self._before)
        event.remove(self.engine, "after_cursor_execute", self._after)

    def _progress(self) -> int:
        if self.current is not None:
            self.current.effort += 1
        return 0

    def _before(
        self,
        connection: Any,
        cursor: Any,
        statement: str,
        parameters: Any,
        context: Any,
        executemany: bool,
    ) -> None:
        if self.current is None:
            return
        self.current.statements += 1
        many = executemany and isinstance(parameters, list | tuple)
        self.current.executions += len(parameters) if many else 1
        self.current.texts.append(statement.split("\n")[0][:120])
        if self.is_sqlite:
            # Set on the connection that runs the statement, in the thread that runs it;
            # it counts only while a step is measured.
            connection.connection.driver_connection.set_progress_handler(self._progress, STEP)

    def _after(self, connection: Any, cursor: Any, *_: Any) -> None:
        if self.current is None:
            return
        # SQLite: the handler stays, since rows are stepped through after this, when fetched.
        if not self.is_sqlite and cursor.description is not None and cursor.rowcount > 0:
            self.current.effort += cursor.rowcount

    async def measure(self, step: Callable[[], Awaitable[object]]) -> Work:
        self.current = Work()
        try:
            await step()
            return self.current
        finally:
            self.current = None


@pytest.fixture
async def meter(registry: Registry) -> AsyncIterator[Meter]:
    meter = Meter(registry)
    yield meter
    meter.close()


async def seed(registry: Registry, images: tuple[bytes, bytes], start: int, stop: int) -> None:
    """Versions `start` to `stop`, alternating between two images, so that `latest` and the
    other floating tags move (and their history grows) with every version. One after another:
    pushed at once they commit in any order on PostgreSQL (no global write lock), and `latest`
    would move only for those higher than all committed before: a history of another length
    in every run."""
    manifests = registry.repository(REPO).manifests
    for index in range(start, stop):
        await manifests.put(version(index), images[index % 2], OCI_MANIFEST, IN_PROCESS)


async def steps(
    client: httpx.AsyncClient, other: bytes, round_: int
) -> dict[str, Callable[[], Awaitable[object]]]:
    """The steps leave the repository as they found it, so both rounds do the same moves."""
    newest = f"{500 + round_}.0.0"
    old_patch = f"0.0.{10 + round_}"
    candidate = f"{600 + round_}.0.0-rc.1"

    async def put(tag: str, content: bytes = other) -> None:
        response = await client.put(
            f"/v2/{REPO}/manifests/{tag}", content=content, headers={"Content-Type": OCI_MANIFEST}
        )
        assert response.status_code == 201, response.text

    async def delete(tag: str) -> None:
        response = await client.delete(f"/v2/{REPO}/manifests/{tag}")
        assert response.status_code == 202, response.text

    async def post(path: str) -> None:
        response = await client.post(path)
        assert response.status_code == 200, response.text

    async def get(path: str) -> None:
        response = await client.get(path)
        assert response.status_code == 200, response.text

    async def push_latest_as_it_is() -> None:
        latest = await client.get(f"/v2/{REPO}/manifests/latest", headers={"Accept": OCI_MANIFEST})
        await put("latest", latest.content)

    return {
        "push a new newest release": lambda: put(newest),
        "delete the newest release": lambda: delete(newest),
        "push an old patch": lambda: put(old_patch),
        "delete an old patch": lambda: delete(old_patch),
        "push a pre-release": lambda: put(candidate),
        "delete a pre-release": lambda: delete(candidate),
        "push latest as the policy has it": push_latest_as_it_is,
        "push latest over the policy": lambda: put("latest"),
        "release latest": lambda: post(f"/api/v1/repositories/{REPO}/tags/latest/release"),
        "read the version tree": lambda: get(f"/api/v1/repositories/{REPO}/versions"),
        "read the history of latest": lambda: get(
            f"/api/v1/repositories/{REPO}/tags/latest/history"
        ),
        "read the repository page": lambda: get(f"/r/{REPO}"),
        "read the next page of tags": lambda: get(f"/r/{REPO}?tags_after=0.0.5"),
        "read the page of latest": lambda: get(f"/r/{REPO}/-/tags/latest"),
    }


async def test_no_step_costs_more_with_more_versions(
    client: httpx.AsyncClient, registry: Registry, meter: Meter
) -> None:
    images = (await push_image(client, REPO, layers=1))[1], (await push_image(client, REPO))[1]
    _, other = await push_image(client, REPO, layers=1)
    # The page's usage figures are an aggregate over the whole repository, computed at most
    # every 30 seconds (tests/web/test_page_statements.py checks that); here they are
    # computed once, so that both rounds measure what a page view costs between two.
    registry.usage_cache = UsageCache(max_age=float("inf"))
    assert (await client.get(f"/r/{REPO}")).status_code == 200
    measured: list[dict[str, Work]] = []
    for round_, (start, stop) in enumerate(((0, SMALL), (SMALL, LARGE))):
        await seed(registry, images, start, stop)
        work = {}
        for name, step in (await steps(client, other, round_)).items():
            work[name] = await meter.measure(step)
        measured.append(work)
    small, large = measured
    grew = {
        name: (
            small[name].statements,
            large[name].statements,
            small[name].effort,
            large[name].effort,
        )
        for name in small
        if large[name].statements != small[name].statements
        # A B-tree seek costs a few instructions more as the tree deepens; a scan costs 5x.
        or (large[name].effort > small[name].effort * 1.3 + 10 and name not in COUNTS_ALL)
    }
    assert not grew, f"(statements, effort) at {SMALL} and {LARGE} versions: {grew}"


async def test_a_release_push_sends_as_many_statements_as_a_plain_tag_push(
    client: httpx.AsyncClient, registry: Registry, meter: Meter
) -> None:
    """Issue 20's second goal (a version push within 1.2x a plain-tag push): moving the
    three floating tags reads them with the releases ranked next above the pushed one in one
    statement and writes all four tags in one, so only rows, not statements, are added; on
    PostgreSQL not executions either (an executemany is one per row there)."""
    images = (await push_image(client, REPO, layers=1))[1], (await push_image(client, REPO))[1]
    await seed(registry, images, 0, 300)
    _, other = await push_image(client, REPO, layers=1)
    plain: list[int] = []
    release: list[int] = []
    executions: dict[str, list[int]] = {"plain": [], "release": []}
    for round_ in range(2):
        for tag, counts in ((f"build-{round_}", plain), (f"{100 + round_}.0.0", release)):
            content = json.loads(other)
            content["annotations"] = {"round": tag}
            body = json.dumps(content).encode()

            async def put(tag: str = tag, body: bytes = body) -> None:
                response = await client.put(
                    f"/v2/{REPO}/manifests/{tag}",
                    content=body,
                    headers={"Content-Type": OCI_MANIFEST},
                )
                assert response.status_code == 201, response.text

            work = await meter.measure(put)
            counts.append(work.statements)
            executions["plain" if counts is plain else "release"].append(work.executions)
    # The last release push moved `latest` (and its lines) onto itself.
    newest = await client.get(f"/v2/{REPO}/manifests/101.0.0", headers={"Accept": OCI_MANIFEST})
    latest = await client.get(f"/v2/{REPO}/manifests/latest", headers={"Accept": OCI_MANIFEST})
    assert latest.headers["docker-content-digest"] == newest.headers["docker-content-digest"]
    assert release == plain, f"statements: release pushes {release}, plain-tag pushes {plain}"
    if not registry.metadata.is_sqlite:
        # On PostgreSQL the four tags, four history rows and four events each go as one
        # execution, not one per row (SQLite steps one prepared statement per row instead).
        assert executions["release"] == executions["plain"], f"executions: {executions}"
