"""Pull statistics behind a trusted proxy (issue 17, registry/pulls.py): a HEAD by tag and the
GET by digest that follows are paired per client as the access control resolves it (the
address the proxy forwarded for), not per the proxy's own address."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx

from tests.api.helpers import DOCKER_MANIFEST, OCI_MANIFEST, push_image
from tests.auth.conftest import As, basic

ACCEPT = {"Accept": f"{OCI_MANIFEST}, {DOCKER_MANIFEST}"}
PROXY = "10.0.0.1"  # auth.trusted_proxies in tests/auth/conftest.py


async def test_two_clients_behind_one_trusted_proxy_do_not_share_a_tag_resolution(
    client: httpx.AsyncClient, app_for_address: Callable[[str], Any]
) -> None:
    with As(client, basic("jimo")):
        digest, _ = await push_image(client, "jimo/app", "1.0.0")
    async with app_for_address(PROXY) as proxied:
        proxied.headers.update(basic("jimo"))
        first = {**ACCEPT, "X-Forwarded-For": "203.0.113.7"}
        second = {**ACCEPT, "X-Forwarded-For": "203.0.113.8"}
        # One client resolves the tag; another, behind the same proxy, GETs by digest.
        assert (await proxied.head("/v2/jimo/app/manifests/1.0.0", headers=first)).is_success
        assert (await proxied.get(f"/v2/jimo/app/manifests/{digest}", headers=second)).is_success
        stats = (await proxied.get("/api/v1/repositories/jimo/app/pulls")).json()
        assert stats["pulls"] == 1
        assert stats["tags"] == {}  # Not a pull of 1.0.0: the other client resolved it.
        # The client that resolved the tag pulls it.
        assert (await proxied.get(f"/v2/jimo/app/manifests/{digest}", headers=first)).is_success
        stats = (await proxied.get("/api/v1/repositories/jimo/app/pulls")).json()
        assert (stats["pulls"], stats["tags"]["1.0.0"]["pulls"]) == (2, 1)
