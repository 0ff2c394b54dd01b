"""Browser tests: Playwright driving Debian's Chromium against a real `cangku serve`.

Chromium comes from the distribution (`apt-get install chromium`), never from
`playwright install`. Without it (or without Playwright) the tests skip, or fail when
CANGKU_REQUIRE_CLIENTS=1 (CI). Screenshots of every page land in tests/browser/artifacts/.
"""
# ruff: noqa: F401  (fixtures imported from the e2e suite, used under their names)

from __future__ import annotations

import base64
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import (
    MANIFEST_ACCEPT,
    OCI_CONFIG,
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
    RegistryServer,
    RegistryServerFactory,
    docker,
    docker_config_dir,
    docker_images,
    http_client,
    require_client,
    server_kind,
    sha256_digest,
    skopeo,
)

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
ARTIFACTS = Path(__file__).parent / "artifacts"
ADMIN_PASSWORD = "browser-admin-password"
PASSWORDS = {"jimo": "jimo-browser-password", "lee": "lee-browser-password"}


def _unavailable(message: str) -> None:
    if os.environ.get("CANGKU_REQUIRE_CLIENTS") == "1":
        pytest.fail(f"{message} (CANGKU_REQUIRE_CLIENTS=1)", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    """A headless Chromium browser (Playwright's Browser).

    Module-scoped: Playwright's sync API keeps an event loop running while it is started,
    which would break the async tests of other modules if it outlived this one.
    """
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("Playwright for Python is not installed")
    if not CHROMIUM.exists():
        _unavailable(f"{CHROMIUM} is missing: apt-get install -y chromium")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="module")
def ui_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    """cangku with accounts on: admin, and the users jimo and lee."""
    if server_kind() != "cangku":
        pytest.skip("the web UI is cangku's")
    factory = RegistryServerFactory(tmp_path_factory.mktemp("browser"))
    try:
        server = factory.start(auth=True, extra_env={"CANGKU_ADMIN_PASSWORD": ADMIN_PASSWORD})
        for name, password in PASSWORDS.items():
            server.cangku_cli(
                "user", "add", name, "--password-stdin", input=f"{password}\n".encode()
            )
        yield server
    finally:
        factory.stop_all()


@pytest.fixture
def page(chromium: Any, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A fresh browser context (no cookies) and page; JavaScript dialogs are recorded."""
    context = chromium.new_context(viewport={"width": 1200, "height": 800})
    tab = context.new_page()
    tab.dialogs = []

    def record(dialog: Any) -> None:
        tab.dialogs.append(dialog.message)
        dialog.dismiss()

    tab.on("dialog", record)
    try:
        yield tab
    finally:
        context.close()


class Screenshots:
    def __init__(self, test_name: str) -> None:
        self.prefix = re.sub(r"[^A-Za-z0-9_-]+", "-", test_name)
        self.count = 0

    def __call__(self, page: Any, what: str) -> Path:
        ARTIFACTS.mkdir(exist_ok=True)
        self.count += 1
        path = ARTIFACTS / f"{self.prefix}-{self.count:02d}-{what}.png"
        page.screenshot(path=str(path), full_page=True)
        return path


@pytest.fixture
def screenshot(request: pytest.FixtureRequest) -> Screenshots:
    """screenshot(page, "what") saves a full-page PNG under tests/browser/artifacts/."""
    return Screenshots(request.node.name)


def basic(user: str) -> dict[str, str]:
    secret = PASSWORDS[user]
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{secret}".encode()).decode()}


def push_image_over_http(
    server: RegistryServer, user: str, name: str, tag: str, labels: dict[str, str]
) -> str:
    """A one-layer image pushed with plain HTTP requests; returns the manifest digest."""
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Labels": labels, "Cmd": ["/bin/true"]},
            "rootfs": {"type": "layers", "diff_ids": []},
            "history": [{"created_by": labels.get("history", "pushed by a browser test")}],
        }
    ).encode()
    layer = os.urandom(1024)
    with http_client(base_url=server.url, headers=basic(user)) as client:
        for blob in (config, layer):
            response = client.post(
                f"/v2/{name}/blobs/uploads/", params={"digest": sha256_digest(blob)}, content=blob
            )
            assert response.status_code == 201, response.text
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {
                    "mediaType": OCI_CONFIG,
                    "digest": sha256_digest(config),
                    "size": len(config),
                },
                "layers": [
                    {
                        "mediaType": OCI_LAYER_GZIP,
                        "digest": sha256_digest(layer),
                        "size": len(layer),
                    }
                ],
            }
        ).encode()
        response = client.put(
            f"/v2/{name}/manifests/{tag}",
            content=manifest,
            headers={"Content-Type": OCI_MANIFEST},
        )
        assert response.status_code == 201, response.text
    return sha256_digest(manifest)


def manifest_status(server: RegistryServer, user: str, name: str, reference: str) -> int:
    with http_client(base_url=server.url, headers=basic(user)) as client:
        return client.head(
            f"/v2/{name}/manifests/{reference}", headers={"Accept": MANIFEST_ACCEPT}
        ).status_code


def sign_in(page: Any, server: RegistryServer, user: str) -> None:
    page.goto(f"{server.url}/signin")
    page.get_by_label("Username").fill(user)
    page.get_by_label("Password").fill(PASSWORDS[user])
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{server.url}/")
