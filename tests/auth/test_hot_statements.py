"""The statements of the busiest requests are built once with authentication on too:
a bearer token's account, memberships and the repository's visibility are read on every
request (tests/api/test_hot_statements.py says why this matters)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import httpx
import pytest

from cangku.registry import Registry
from tests.api.helpers import push_image
from tests.api.test_hot_statements import (
    Request,
    blob_head,
    executed_statements,
    manifest_get,
    manifest_put,
    through_sqlalchemy,
    upload_then_put,
)
from tests.auth.conftest import As, bearer, token_for


@contextlib.asynccontextmanager
async def signed_in_and_warmed(
    client: httpx.AsyncClient, request_kind: Request
) -> AsyncIterator[None]:
    """As jimo with a bearer token for jimo/app, which holds an image, once `request_kind`
    ran a first time (whatever is built on first use is built by then)."""
    token = await token_for(client, "jimo", "repository:jimo/app:pull,push")
    with As(client, bearer(token)):
        await push_image(client, "jimo/app", "base")
        await request_kind(client, 0)
        yield


@pytest.mark.parametrize("request_kind", [upload_then_put, manifest_put, manifest_get, blob_head])
async def test_the_statements_of_an_authenticated_request_are_built_once(
    client: httpx.AsyncClient, registry: Registry, request_kind: Request
) -> None:
    async with signed_in_and_warmed(client, request_kind):
        with executed_statements(registry) as first:
            await request_kind(client, 1)
        with executed_statements(registry) as second:
            await request_kind(client, 2)
    assert second, "the request ran no statement: the test would prove nothing"
    built_anew = [str(s) for s in second if not any(s is known for known in first)]
    assert built_anew == []


@pytest.mark.parametrize("request_kind", [upload_then_put, manifest_put, manifest_get, blob_head])
async def test_an_authenticated_request_runs_its_statements_on_the_drivers_cursor(
    client: httpx.AsyncClient, registry: Registry, request_kind: Request
) -> None:
    """The account, memberships and visibility reads too (metadata/prepared.py)."""
    async with signed_in_and_warmed(client, request_kind):
        with through_sqlalchemy() as seen:
            await request_kind(client, 1)
    assert seen == []
