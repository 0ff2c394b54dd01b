"""ORAS, through its Python SDK (`oras` on PyPI, from the ORAS project): artifacts of several
files pushed in chunks and pulled back, a referrer attached with `subject`, token auth."""

from __future__ import annotations

import os
import re
import time
import uuid
from pathlib import Path

import oras.client
import oras.oci
import pytest
import requests

from .conftest import (
    OCI_INDEX,
    OCI_MANIFEST,
    RegistryServer,
    RegistryServerFactory,
    http_client,
    server_kind,
)

pytestmark = pytest.mark.e2e


def oras_client(server: RegistryServer, auth_backend: str = "token") -> oras.client.OrasClient:
    return oras.client.OrasClient(hostname=server.host, insecure=True, auth_backend=auth_backend)


def artifact_files(directory: Path) -> dict[str, bytes]:
    files = {
        "model.bin": os.urandom(3 * 1024 * 1024 + 123),  # three chunks and a bit
        "README.txt": b"weights for the tests\n",
    }
    for name, content in files.items():
        (directory / name).write_bytes(content)
    return files


def test_oras_pushes_an_artifact_in_chunks_pulls_it_back_and_attaches_a_referrer(
    registry: RegistryServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # oras names layers by the relative paths it is given
    files = artifact_files(tmp_path)
    name = f"jimo/oras-{uuid.uuid4().hex[:8]}"
    client = oras_client(registry)

    pushed = client.push(
        target=f"{registry.host}/{name}:v1",
        files=["model.bin", "README.txt:text/plain"],
        manifest_annotations={"org.example.purpose": "e2e"},
        do_chunked=True,
        chunk_size=1024 * 1024,
    )
    assert pushed.status_code == 201
    digest = pushed.headers["Docker-Content-Digest"]

    out = tmp_path / "out"
    pulled = client.pull(target=f"{registry.host}/{name}:v1", outdir=str(out))
    assert sorted(Path(path).name for path in pulled) == sorted(files)
    for file_name, content in files.items():
        assert (out / file_name).read_bytes() == content
    assert client.get_tags(f"{registry.host}/{name}") == ["v1"]

    with http_client() as http:
        manifest = http.get(
            f"{registry.url}/v2/{name}/manifests/{digest}", headers={"Accept": OCI_MANIFEST}
        )
    assert manifest.json()["annotations"]["org.example.purpose"] == "e2e"
    subject = oras.oci.Subject(OCI_MANIFEST, digest, len(manifest.content))
    (tmp_path / "signature.txt").write_bytes(b"signed, the tests")
    signed = client.push(
        target=f"{registry.host}/{name}:v1-signature",
        files=["signature.txt:application/vnd.example.signature"],
        subject=subject,
    )
    assert signed.status_code == 201
    if server_kind() == "reference":
        return  # Distribution 2.8 predates the referrers API.
    with http_client() as http:
        referrers = http.get(f"{registry.url}/v2/{name}/referrers/{digest}")
    assert referrers.headers["Content-Type"] == OCI_INDEX
    assert [d["digest"] for d in referrers.json()["manifests"]] == [
        signed.headers["Docker-Content-Digest"]
    ]


def test_oras_with_credentials_pushes_only_into_its_own_namespace(
    registry_factory: RegistryServerFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if server_kind() != "cangku":
        pytest.skip("accounts are cangku's: the reference registry runs without them here")
    server = registry_factory.start(auth=True)
    server.cangku_cli("user", "add", "jimo", "--password-stdin", input=b"jimo-oras-password\n")
    monkeypatch.chdir(tmp_path)
    files = artifact_files(tmp_path)

    anonymous = oras_client(server)
    with pytest.raises((ValueError, requests.HTTPError)):
        anonymous.push(target=f"{server.host}/jimo/model:v1", files=["README.txt"])

    # Basic credentials on every request, which cangku's /v2 accepts: oras-py's token backend
    # renews its token only on 403, not on the 401 `insufficient_scope` challenge
    # of the token spec, which a push gets after a HEAD answered with a pull-only token.
    client = oras_client(server, auth_backend="basic")
    client.login(username="jimo", password="jimo-oras-password")
    assert client.push(target=f"{server.host}/jimo/model:v1", files=["README.txt"]).ok
    out = tmp_path / "out"
    client.pull(target=f"{server.host}/jimo/model:v1", outdir=str(out))
    assert (out / "README.txt").read_bytes() == files["README.txt"]
    with pytest.raises((ValueError, requests.HTTPError)):
        client.push(target=f"{server.host}/lee/model:v1", files=["README.txt"])


def test_oras_token_backend_pulls_but_cannot_push_as_docs_authentication_says(
    registry_factory: RegistryServerFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/authentication.md tells ORAS Python SDK users to take the basic backend: its
    token backend keeps a pull-only token after the 401 `insufficient_scope` challenge of
    a push (it renews only on 403). Should oras-py change, this fails: update the docs."""
    if server_kind() != "cangku":
        pytest.skip("accounts are cangku's: the reference registry runs without them here")
    server = registry_factory.start(auth=True)
    server.cangku_cli("user", "add", "jimo", "--password-stdin", input=b"jimo-oras-password\n")
    monkeypatch.chdir(tmp_path)
    files = artifact_files(tmp_path)
    basic = oras_client(server, auth_backend="basic")
    basic.login(username="jimo", password="jimo-oras-password")
    assert basic.push(target=f"{server.host}/jimo/model:v1", files=["README.txt"]).ok

    token = oras_client(server, auth_backend="token")
    token.login(username="jimo", password="jimo-oras-password")
    token.pull(target=f"{server.host}/jimo/model:v1", outdir=str(tmp_path / "out"))
    assert (tmp_path / "out" / "README.txt").read_bytes() == files["README.txt"]
    with pytest.raises(ValueError):
        token.push(target=f"{server.host}/jimo/model:v2", files=["README.txt"])
    # The push step was challenged, and the same pull-only token (user=jimo) came back.
    # The access line is written after the response went out: give the last one a moment.
    deadline = time.monotonic() + 10
    while True:
        log = server.log_path.read_text(errors="replace")
        resent = re.findall(
            r"(?:POST /v2/jimo/model/blobs/uploads/|PUT /v2/jimo/model/manifests/v2) 401 "
            r".* user=jimo",
            log,
        )
        if len(resent) >= 2 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert len(resent) >= 2, log[-3000:]
