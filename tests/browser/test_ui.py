"""The web UI in a real browser, against images pushed by the real docker and skopeo."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Client, DockerImageBuilder, RegistryServer

from .conftest import (
    PASSWORDS,
    Screenshots,
    manifest_status,
    push_image_over_http,
    sign_in,
)

pytestmark = [pytest.mark.e2e, pytest.mark.browser]


def docker_login(docker: Client, tmp_path: Path, server: RegistryServer, user: str) -> Client:
    """docker with a config of this test's own, logged in as `user`."""
    config = tmp_path / "docker-config"
    config.mkdir()
    client = Client(docker.binary, {**docker.env, "DOCKER_CONFIG": str(config)})
    client.run(
        "login",
        server.docker_host,
        "-u",
        user,
        "--password-stdin",
        input=f"{PASSWORDS[user]}\n".encode(),
    )
    return client


def test_find_docker_and_skopeo_pushes_open_a_tag_and_delete_it(
    ui_server: RegistryServer,
    docker: Client,
    docker_images: DockerImageBuilder,
    skopeo: Client,
    tmp_path: Path,
    page: Any,
    screenshot: Screenshots,
) -> None:
    docker_cli = docker_login(docker, tmp_path, ui_server, "jimo")
    docker_ref = f"{ui_server.docker_host}/jimo/web-docker:1.0.0"
    docker_images.build(docker_ref, layers=2)
    docker_cli.run("push", docker_ref)
    skopeo.run(
        "copy",
        "--dest-tls-verify=false",
        "--dest-creds",
        f"jimo:{PASSWORDS['jimo']}",
        f"docker-daemon:{docker_ref}",
        f"docker://{ui_server.host}/jimo/web-skopeo:2.1.0",
    )

    page.goto(f"{ui_server.url}/")
    screenshot(page, "repositories-signed-out")
    assert page.get_by_text("jimo/web-docker").count() == 0
    page.get_by_role("link", name="Sign in", exact=True).click()
    screenshot(page, "sign-in")
    page.get_by_label("Username").fill("jimo")
    page.get_by_label("Password").fill(PASSWORDS["jimo"])
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{ui_server.url}/")
    assert page.get_by_role("link", name="jimo/web-docker").is_visible()
    assert page.get_by_role("link", name="jimo/web-skopeo").is_visible()
    screenshot(page, "repositories")

    page.get_by_placeholder("Search by name").fill("skopeo")
    page.get_by_role("button", name="Search").click()
    assert page.get_by_role("link", name="jimo/web-docker").count() == 0
    page.get_by_role("link", name="jimo/web-skopeo").click()
    # is_visible() does not wait: the repository page must have loaded first.
    page.wait_for_url(f"{ui_server.url}/r/jimo/web-skopeo")
    assert page.get_by_role("link", name="2.1.0").first.is_visible()
    assert "linux/amd64" in page.content()
    screenshot(page, "repository-skopeo")

    page.goto(f"{ui_server.url}/r/jimo/web-docker")
    pull = page.locator("#pull-command").inner_text()
    assert pull == f"docker pull {ui_server.host}/jimo/web-docker:latest"
    page.set_viewport_size({"width": 1100, "height": 700})
    screenshot(page, "repository")
    page.set_viewport_size({"width": 390, "height": 844})  # a phone
    screenshot(page, "repository-phone")
    page.set_viewport_size({"width": 1200, "height": 800})

    page.get_by_role("link", name="1.0.0", exact=True).first.click()
    assert page.get_by_role("heading", name="Layers").is_visible()
    assert page.get_by_role("heading", name="Config").is_visible()
    screenshot(page, "image")

    page.get_by_role("link", name="Delete").first.click()  # the tag's
    assert "Delete the tag jimo/web-docker:1.0.0?" in page.content()
    screenshot(page, "confirm-delete-tag")
    page.get_by_role("button", name="Delete").click()
    page.wait_for_url(f"{ui_server.url}/r/jimo/web-docker")
    screenshot(page, "repository-after-delete")

    assert manifest_status(ui_server, "jimo", "jimo/web-docker", "1.0.0") == 404
    pulled = docker_cli.run("pull", docker_ref, check=False)
    assert pulled.returncode != 0, pulled.out


def test_label_with_a_script_shows_as_text_and_runs_nothing(
    ui_server: RegistryServer, page: Any, screenshot: Screenshots
) -> None:
    script = "<script>alert(1)</script>"
    push_image_over_http(
        ui_server, "jimo", "jimo/xss", "1.0.0", {script: script, "history": "<b>bold</b>"}
    )
    sign_in(page, ui_server, "jimo")
    page.goto(f"{ui_server.url}/r/jimo/xss/-/tags/1.0.0")
    labels = page.locator("table.labels")
    assert labels.get_by_text(script).count() == 2  # the key and the value, as text
    assert page.locator("b", has_text="bold").count() == 0
    screenshot(page, "image-with-script-label")
    assert page.dialogs == []


def test_posts_without_a_valid_csrf_token_are_refused_and_delete_nothing(
    ui_server: RegistryServer, page: Any, screenshot: Screenshots
) -> None:
    push_image_over_http(ui_server, "jimo", "jimo/csrf", "1.0.0", {})
    sign_in(page, ui_server, "jimo")
    target = f"{ui_server.url}/r/jimo/csrf/-/tags/1.0.0/delete"
    without = page.request.post(target, form={}, max_redirects=0)
    assert without.status == 403
    wrong = page.request.post(target, form={"csrf": "not-the-token"}, max_redirects=0)
    assert wrong.status == 403
    page.set_content(without.text())
    screenshot(page, "csrf-refused")
    assert manifest_status(ui_server, "jimo", "jimo/csrf", "1.0.0") == 200


def test_another_users_private_repository_is_not_visible_and_its_delete_is_refused(
    ui_server: RegistryServer, page: Any, screenshot: Screenshots
) -> None:
    push_image_over_http(ui_server, "lee", "lee/private", "1.0.0", {})
    sign_in(page, ui_server, "jimo")
    assert page.get_by_text("lee/private").count() == 0
    response = page.goto(f"{ui_server.url}/r/lee/private")
    assert response is not None and response.status == 404
    screenshot(page, "not-found")
    # A valid CSRF token of jimo's own session: the refusal is the permission check.
    page.goto(f"{ui_server.url}/account")
    token = page.locator("input[name=csrf]").first.get_attribute("value")
    for path in ("/r/lee/private/-/tags/1.0.0/delete", "/r/lee/private/-/delete"):
        refused = page.request.post(f"{ui_server.url}{path}", form={"csrf": token or ""})
        assert refused.status == 403, path
    assert manifest_status(ui_server, "lee", "lee/private", "1.0.0") == 200
