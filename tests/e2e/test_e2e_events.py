"""Issue 16: an event recorded with a push survives a `kill -9` of the server right after the
push returns, and is delivered after the restart, under one event id."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from .conftest import RegistryServerFactory, http_client, sha256_digest

pytestmark = pytest.mark.e2e

SECRET = "whsec_" + base64.b64encode(b"e2e-events-secret-0123456789").decode()
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


class Receiver:
    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                with receiver.lock:
                    receiver.requests.append(
                        ({k.lower(): v for k, v in self.headers.items()}, body)
                    )
                self.send_response(204)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *args: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def events(self) -> list[tuple[dict[str, str], dict[str, Any]]]:
        with self.lock:
            return [(headers, json.loads(body)) for headers, body in self.requests]


def push(base: str, name: str, tag: str) -> str:
    """Push a one-layer image as `tag` over HTTP; returns the manifest digest."""
    with http_client(timeout=30) as client:
        digests = []
        for blob in (json.dumps({"architecture": "amd64", "os": "linux"}).encode(), b"layer"):
            digest = sha256_digest(blob)
            start = client.post(f"{base}/v2/{name}/blobs/uploads/")
            assert start.status_code == 202, start.text
            location = start.headers["location"]
            location = location if location.startswith("http") else base + location
            done = client.put(location, params={"digest": digest}, content=blob)
            assert done.status_code == 201, done.text
            digests.append((digest, len(blob)))
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {
                    "mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": digests[0][0],
                    "size": digests[0][1],
                },
                "layers": [
                    {
                        "mediaType": "application/vnd.oci.image.layer.v1.tar",
                        "digest": digests[1][0],
                        "size": digests[1][1],
                    }
                ],
            }
        ).encode()
        response = client.put(
            f"{base}/v2/{name}/manifests/{tag}",
            content=manifest,
            headers={"content-type": OCI_MANIFEST},
        )
        assert response.status_code == 201, response.text
        return sha256_digest(manifest)


def test_kill_9_right_after_a_push_still_delivers_its_events_once(
    registry_factory: RegistryServerFactory, tmp_path: Path
) -> None:
    with Receiver() as receiver:
        config = tmp_path / "events.yml"
        config.write_text(
            "events:\n"
            "  allow_private: true\n"
            f"  endpoints:\n  - url: {receiver.url}\n    secret: {SECRET}\n"
            "    types: [io.cangku.tag.created]\n"
        )
        server = registry_factory.start(extra_args=["--config", str(config)])
        # The worker has seen the endpoint (its place in the outbox) once the first
        # event reaches it.
        push(server.url, "jimo/app", "warm-up")
        deadline = time.monotonic() + 20
        while not receiver.events() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert receiver.events(), server.log_tail()

        # The worker polls every 0.5 s: killed at once, it has not sent the new events yet.
        digest = push(server.url, "jimo/app", "1.9.3")
        server.kill()
        seen_before_restart = len(receiver.events())
        server.start()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            tags = [event["data"]["tag"] for _, event in receiver.events()]
            if {"1.9.3", "1.9", "1", "latest"} <= set(tags):
                break
            time.sleep(0.1)
        server.stop()

    received = receiver.events()
    tags = [event["data"]["tag"] for _, event in received]
    assert sorted(tags[1:]) == ["1", "1.9", "1.9.3", "latest"], (tags, server.log_tail())
    # Sent after the restart (not before the kill), once each, under the id recorded with the push.
    assert seen_before_restart == 1
    ids = [headers["webhook-id"] for headers, _ in received]
    assert len(set(ids)) == len(ids) == 5
    for headers, event in received[1:]:
        assert headers["webhook-id"] == event["id"]
        assert event["data"]["digest"] == digest
        key = base64.b64decode(SECRET.removeprefix("whsec_"))
        body = json.dumps(event, separators=(",", ":")).encode()
        signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
        expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
        assert headers["webhook-signature"] == f"v1,{expected}"
