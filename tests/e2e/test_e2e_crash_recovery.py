"""A registry killed with SIGKILL in the middle of a push recovers on restart."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from .conftest import (
    Client,
    OciLayout,
    RegistryServerFactory,
    http_client,
    sha256_digest,
)

pytestmark = pytest.mark.e2e

BIG_LAYER_BYTES = 48 * 1024 * 1024
CHUNK_BYTES = 256 * 1024
TLS_OFF = "--tls-verify=false"


def test_sigkill_during_blob_upload_keeps_earlier_images_and_hides_the_partial_blob(
    registry_factory: RegistryServerFactory,
    skopeo: Client,
    oci_layout: Callable[[str], OciLayout],
    tmp_path: Path,
) -> None:
    server = registry_factory.start()

    # An image pushed and acknowledged before the crash.
    earlier = oci_layout("earlier")
    earlier_image = earlier.add_image(architecture="amd64", files={"etc/e.bin": os.urandom(4096)})
    earlier.tag(earlier_image, "1")
    earlier_ref = f"docker://{server.host}/jimo/earlier"
    skopeo.run("copy", "--dest-tls-verify=false", f"oci:{earlier.path}:1", f"{earlier_ref}:1")
    earlier_digest = earlier_image["digest"]

    # An image whose one big layer is being uploaded when the server dies.
    big = oci_layout("big")
    big_image = big.add_image(architecture="amd64", files={"big.bin": os.urandom(BIG_LAYER_BYTES)})
    big.tag(big_image, "1")
    layer = json.loads(big.blob(big_image["digest"]))["layers"][0]
    layer_bytes = big.blob(layer["digest"])

    half_sent = threading.Event()
    server_killed = threading.Event()
    upload_errors: list[BaseException] = []

    def body() -> Iterator[bytes]:
        for offset in range(0, len(layer_bytes), CHUNK_BYTES):
            if offset >= len(layer_bytes) // 2 and not half_sent.is_set():
                half_sent.set()
                server_killed.wait(timeout=60)
            yield layer_bytes[offset : offset + CHUNK_BYTES]

    with http_client(base_url=server.url) as client:
        started = client.post("/v2/jimo/crash/blobs/uploads/")
        assert started.status_code == 202, started.text
        location = str(httpx.URL(server.url).join(started.headers["Location"]))

        def upload() -> None:
            try:
                # A streamed (chunked) PATCH as docker sends it; it cannot finish.
                with http_client() as uploader:
                    uploader.patch(
                        location,
                        content=body(),
                        headers={"Content-Type": "application/octet-stream"},
                    )
            except Exception as error:
                upload_errors.append(error)

        uploader_thread = threading.Thread(target=upload, daemon=True)
        uploader_thread.start()
        try:
            assert half_sent.wait(timeout=60), "the upload never got half way"
            server.kill()
        finally:
            server_killed.set()
            uploader_thread.join(timeout=60)
        assert not uploader_thread.is_alive()
        assert upload_errors, "the PATCH should have failed when its server died"

    server.start()  # same data directory, same port
    with http_client(base_url=server.url) as client:
        for repository in ("jimo/crash", "jimo/earlier"):
            head = client.head(f"/v2/{repository}/blobs/{layer['digest']}")
            assert head.status_code == 404, f"partial blob visible in {repository}"
        # The interrupted session may be forgotten, or resumable from the offset it reports:
        # then that offset must be exactly what was kept, or the digest will not match.
        status = client.get(location)
        assert status.status_code in (204, 404), status.text
        if status.status_code == 204:
            offset = int(status.headers["Range"].rsplit("-", 1)[1]) + 1
            assert 0 < offset < len(layer_bytes)
            resumed_location = str(httpx.URL(location).join(status.headers["Location"]))
            rest = client.patch(
                resumed_location,
                content=layer_bytes[offset:],
                headers={
                    "Content-Type": "application/octet-stream",
                    "Content-Range": f"{offset}-{len(layer_bytes) - 1}",
                },
            )
            assert rest.status_code == 202, rest.text
            final_location = str(httpx.URL(resumed_location).join(rest.headers["Location"]))
            done = client.put(final_location, params={"digest": layer["digest"]})
            assert done.status_code == 201, done.text

    # What was pushed before the crash is intact, by digest and by tag.
    by_digest = f"{earlier_ref}@{earlier_digest}"
    assert skopeo.run("inspect", TLS_OFF, "--raw", by_digest).stdout == earlier.blob(earlier_digest)
    pulled = OciLayout(tmp_path / "pulled-earlier")
    skopeo.run("copy", "--src-tls-verify=false", by_digest, f"oci:{pulled.path}:1")
    assert pulled.manifest_digest("1") == earlier_digest
    earlier_manifest = json.loads(earlier.blob(earlier_digest))
    for descriptor in [earlier_manifest["config"], *earlier_manifest["layers"]]:
        assert pulled.blob(descriptor["digest"]) == earlier.blob(descriptor["digest"])
    inspected = skopeo.run("inspect", TLS_OFF, "--format", "{{.Digest}}", f"{earlier_ref}:1")
    assert inspected.out.strip() == earlier_digest

    # The push that was cut off completes against the restarted server.
    big_ref = f"docker://{server.host}/jimo/crash:1"
    skopeo.run("copy", "--dest-tls-verify=false", f"oci:{big.path}:1", big_ref)
    assert skopeo.run("inspect", TLS_OFF, "--raw", big_ref).stdout == big.blob(big_image["digest"])
    with http_client(base_url=server.url) as client:
        head = client.head(f"/v2/jimo/crash/blobs/{layer['digest']}")
        assert head.status_code == 200
        assert int(head.headers["Content-Length"]) == len(layer_bytes)
        hasher = hashlib.sha256()
        with client.stream("GET", f"/v2/jimo/crash/blobs/{layer['digest']}") as response:
            assert response.status_code == 200
            for chunk in response.iter_bytes():
                hasher.update(chunk)
        assert f"sha256:{hasher.hexdigest()}" == layer["digest"] == sha256_digest(layer_bytes)
