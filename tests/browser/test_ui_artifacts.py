"""Artifacts and multi-arch indexes in a real browser (issue 19 items 2-3): an artifact pushed
by ORAS shows its type, files, subject and an `oras pull` that works; an index pushed by
skopeo shows what each platform pulls."""
# ruff: noqa: F401, F811  (fixtures imported from the e2e suite, used under their names)

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import oras.client
import oras.oci
import pytest

from cangku.content.units import format_size
from tests.e2e.conftest import (
    OCI_MANIFEST,
    Client,
    OciLayout,
    RegistryServer,
    http_client,
    oci_layout,
)

from .conftest import PASSWORDS, Screenshots, basic, push_image_over_http, sign_in

pytestmark = [pytest.mark.e2e, pytest.mark.browser]


def oras_as(server: RegistryServer, user: str) -> oras.client.OrasClient:
    # The basic backend: oras-py's token backend does not renew a pull-only token on the
    # 401 a push gets (docs/authentication.md).
    client = oras.client.OrasClient(hostname=server.host, insecure=True, auth_backend="basic")
    client.login(username=user, password=PASSWORDS[user])
    return client


def test_oras_artifact_page_shows_type_files_subject_and_an_oras_pull_that_works(
    ui_server: RegistryServer,
    page: Any,
    screenshot: Screenshots,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    image_digest = push_image_over_http(ui_server, "jimo", "jimo/model", "1.0.0", {})
    with http_client(base_url=ui_server.url, headers=basic("jimo")) as http:
        raw_image = http.get(
            f"/v2/jimo/model/manifests/{image_digest}", headers={"Accept": OCI_MANIFEST}
        ).content
    monkeypatch.chdir(tmp_path)  # oras titles each layer with the relative path it is given
    files = {"model.bin": os.urandom(40_000), "README.txt": b"weights for the browser test\n"}
    for name, content in files.items():
        Path(name).write_bytes(content)
    client = oras_as(ui_server, "jimo")
    pushed = client.push(
        target=f"{ui_server.host}/jimo/model:model-v1",
        files=["model.bin", "README.txt:text/plain"],
        subject=oras.oci.Subject(OCI_MANIFEST, image_digest, len(raw_image)),
    )
    assert pushed.ok, pushed.text
    artifact_digest = pushed.headers["Docker-Content-Digest"]

    sign_in(page, ui_server, "jimo")
    page.goto(f"{ui_server.url}/r/jimo/model/-/tags/model-v1")
    screenshot(page, "artifact")
    # oras-py writes no artifactType: its config media type is the artifact type.
    assert page.locator("#artifact-type").inner_text() == "application/vnd.unknown.config.v1+json"
    files_table = page.locator("table.files").inner_text()
    assert "model.bin" in files_table and "README.txt" in files_table
    assert page.get_by_role("heading", name="Config").count() == 0
    assert page.get_by_text("Platform", exact=True).count() == 0
    assert image_digest in page.locator("#subject").inner_text()
    pull = page.locator("#pull-command").inner_text()
    assert pull == f"oras pull {ui_server.host}/jimo/model:model-v1"

    # The command works: ORAS pulls both files back.
    out = tmp_path / "out"
    pulled = client.pull(target=pull.removeprefix("oras pull "), outdir=str(out))
    assert sorted(Path(path).name for path in pulled) == sorted(files)
    for name, content in files.items():
        assert (out / name).read_bytes() == content

    # The subject's page lists the artifact among its referrers, and keeps `docker pull`.
    page.locator("#subject a").click()
    page.wait_for_url(f"{ui_server.url}/r/jimo/model/-/manifests/{image_digest}")
    screenshot(page, "artifact-subject")
    assert page.locator("#pull-command").inner_text().startswith("docker pull ")
    page.get_by_role("link", name=artifact_digest[:19]).click()
    page.wait_for_url(f"{ui_server.url}/r/jimo/model/-/manifests/{artifact_digest}")
    assert page.locator("#pull-command").inner_text().startswith("oras pull ")


def test_index_page_shows_what_each_platform_pulls(
    ui_server: RegistryServer,
    skopeo: Client,
    oci_layout: Callable[[str], OciLayout],
    page: Any,
    screenshot: Screenshots,
) -> None:
    layout = oci_layout("multi")
    children = {
        architecture: layout.add_image(
            architecture=architecture, files={f"app-{architecture}.bin": os.urandom(size)}
        )
        for architecture, size in (("amd64", 300_000), ("arm64", 700_000))
    }
    index = layout.add_index(list(children.values()))
    layout.tag(index, "1.0")
    skopeo.run(
        "copy",
        "--all",
        "--dest-tls-verify=false",
        "--dest-creds",
        f"jimo:{PASSWORDS['jimo']}",
        f"oci:{layout.path}:1.0",
        f"docker://{ui_server.host}/jimo/multi:1.0",
    )
    pulls = {}
    for architecture, descriptor in children.items():
        manifest = json.loads(layout.blob(descriptor["digest"]))
        pulls[architecture] = manifest["config"]["size"] + sum(
            layer["size"] for layer in manifest["layers"]
        )
    assert pulls["arm64"] > 500_000 > pulls["amd64"] > 200_000  # each well above a manifest

    sign_in(page, ui_server, "jimo")
    page.goto(f"{ui_server.url}/r/jimo/multi/-/tags/1.0")
    screenshot(page, "index")
    summary = page.locator("#pull-size").inner_text()
    assert summary.startswith(
        f"{format_size(pulls['amd64'])} to {format_size(pulls['arm64'])} per platform"
    ), summary
    rows = page.locator("table.platforms tbody tr")
    assert rows.count() == 2
    for row in range(2):
        cells = rows.nth(row).inner_text()
        architecture = "amd64" if "linux/amd64" in cells else "arm64"
        assert format_size(pulls[architecture]) in cells, cells
    page.goto(f"{ui_server.url}/r/jimo/multi")
    assert "per platform" in page.locator("table.tags").inner_text()
