"""The floor: the least CPU a Python server spends to store a pushed blob on this machine.

`registry_benchmark.py --floor` runs it beside the two registries on the blob push rows
(monolithic and chunked), interleaved with them, so that each row says how much of a
registry's CPU per MB is the work no registry can skip here, in the same memory state:

    receive (`readinto` a reused 1 MiB buffer) -> sha256 -> write() in 32 KiB pieces
    (as both registries write) -> verify the digest -> os.replace into blobs/

It speaks only what the benchmark's blob pushes send (OCI distribution-spec, "Pushing
blobs"): `GET /v2/`; `POST .../blobs/uploads/`; `PATCH` and `PUT ?digest=` on the upload's
URL, bodies framed by Content-Length. No metadata, no repositories, no authentication, no
crash recovery, one thread per connection doing all of its work: not a registry, and never
to be exposed beyond loopback. It also keeps each session's hash in memory and skips what a
registry does per request besides the bytes (authentication, a database, Content-Range
checks): what it spends per MB is what this minimal pipeline costs here.

    python benchmarks/floor_sink.py --listen 127.0.0.1:5999 --data /tmp/floor
"""

from __future__ import annotations

import argparse
import hashlib
import http.server
import os
import re
import threading
import urllib.parse
import uuid
from pathlib import Path
from typing import Any

# Bytes each write() hands the kernel: the same as cangku (storage/filesystem.py FILE_WRITE)
# and the reference, so the page cache's cost per byte is the same for all three.
FILE_WRITE = 32 * 1024
RECEIVE_BUFFER = 1024 * 1024
UPLOAD_PATH = re.compile(r"/v2/(?P<name>[a-z0-9._/-]+)/blobs/uploads/(?P<id>[a-f0-9]{32})")
START_PATH = re.compile(r"/v2/(?P<name>[a-z0-9._/-]+)/blobs/uploads/")
SHA256_DIGEST = re.compile(r"sha256:(?P<hex>[a-f0-9]{64})")


class Upload:
    """An upload session: its file and the hash of what it holds so far (in memory only)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.file = path.open("wb", buffering=0)
        self.hasher = hashlib.sha256()
        self.size = 0
        self.lock = threading.Lock()  # One request per session at a time.


class FloorSink(http.server.ThreadingHTTPServer):
    """The server: upload sessions by id, and the data directory (`uploads/`, `blobs/`)."""

    def __init__(self, address: tuple[str, int], data: Path) -> None:
        super().__init__(address, FloorHandler)
        self.data = data
        (data / "uploads").mkdir(parents=True, exist_ok=True)
        (data / "blobs").mkdir(parents=True, exist_ok=True)
        self.uploads: dict[str, Upload] = {}
        self.uploads_lock = threading.Lock()


class FloorHandler(http.server.BaseHTTPRequestHandler):
    """One connection's requests. A request refused before its body was read closes the
    connection: the unread body must not be taken for the next request."""

    protocol_version = "HTTP/1.1"  # keep-alive, as the benchmark's clients use
    server: FloorSink

    def log_message(self, format: str, *args: Any) -> None:
        pass  # no line per request: neither registry logs one in the benchmark

    def do_GET(self) -> None:
        if self.path.split("?", 1)[0] == "/v2/":
            self.answer(200, body=b"{}")
        else:
            self.answer(404)

    def do_POST(self) -> None:
        started = START_PATH.fullmatch(self.path.split("?", 1)[0])
        if started is None or self.body_length() != 0:
            self.refuse(404 if started is None else 400)
            return
        upload_id = uuid.uuid4().hex
        upload = Upload(self.server.data / "uploads" / upload_id)
        with self.server.uploads_lock:
            self.server.uploads[upload_id] = upload
        self.answer(202, upload_location=(started["name"], upload_id, upload))

    def do_PATCH(self) -> None:
        found = self.find_upload_or_refuse()
        if found is None:
            return
        name, upload_id, upload = found
        with upload.lock:
            if not self.still_open(upload_id) or not self.receive_into(upload):
                return
        self.answer(202, upload_location=(name, upload_id, upload))

    def do_PUT(self) -> None:
        found = self.find_upload_or_refuse()
        if found is None:
            return
        name, upload_id, upload = found
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
        digest = query.get("digest", [""])[-1]
        wanted = SHA256_DIGEST.fullmatch(digest)
        with upload.lock:
            if not self.still_open(upload_id) or not self.receive_into(upload):
                return
            upload.file.close()
            with self.server.uploads_lock:
                self.server.uploads.pop(upload_id, None)
            if wanted is None or upload.hasher.hexdigest() != wanted["hex"]:
                upload.path.unlink(missing_ok=True)
                self.answer(400, body=b'{"errors":[{"code":"DIGEST_INVALID"}]}')
                return
            os.replace(upload.path, self.server.data / "blobs" / wanted["hex"])
        self.send_response(201)
        self.send_header("Location", f"/v2/{name}/blobs/{digest}")
        self.send_header("Docker-Content-Digest", digest)
        self.send_header("Content-Length", "0")
        self.end_headers()

    # -- helpers ----------------------------------------------------------------------------

    def find_upload_or_refuse(self) -> tuple[str, str, Upload] | None:
        """(repository name, session id, session) of the request's URL, or None once it has
        answered 404."""
        matched = UPLOAD_PATH.fullmatch(self.path.split("?", 1)[0])
        upload = None
        if matched is not None:
            with self.server.uploads_lock:
                upload = self.server.uploads.get(matched["id"])
        if matched is None or upload is None:
            self.refuse(404)
            return None
        return matched["name"], matched["id"], upload

    def still_open(self, upload_id: str) -> bool:
        """Under the session's lock: whether a PUT finished it meanwhile (else 404)."""
        with self.server.uploads_lock:
            if upload_id in self.server.uploads:
                return True
        self.refuse(404)
        return False

    def body_length(self) -> int | None:
        """The body's length in bytes (0 without Content-Length); None when the body is
        framed otherwise (chunked: the benchmark never sends it) or the length is no
        number."""
        if self.headers.get("Transfer-Encoding"):
            return None  # the benchmark's pushes never send chunked bodies
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            return None
        return length if length >= 0 else None

    def receive_into(self, upload: Upload) -> bool:
        """Stream the request's body into the upload: the floor's whole per-byte work."""
        length = self.body_length()
        if length is None:
            self.refuse(400)
            return False
        buffer = getattr(self, "buffer", None)
        if buffer is None:
            buffer = self.buffer = memoryview(bytearray(RECEIVE_BUFFER))
        left = length
        while left:
            received = self.rfile.readinto(buffer[: min(left, RECEIVE_BUFFER)])
            if not received:
                self.close_connection = True
                return False
            piece = buffer[:received]
            upload.hasher.update(piece)
            for start in range(0, received, FILE_WRITE):
                part = piece[start : start + FILE_WRITE]
                if upload.file.write(part) != len(part):  # unbuffered: say a full disk
                    raise OSError(f"short write to {upload.path}")
            left -= received
        upload.size += length
        return True

    def refuse(self, status: int) -> None:
        """Answer `status` before the request's body was read, and close the connection."""
        self.close_connection = True
        self.answer(status, close=True)

    def answer(
        self,
        status: int,
        *,
        body: bytes = b"",
        upload_location: tuple[str, str, Upload] | None = None,
        close: bool = False,
    ) -> None:
        """Send `status` with `body`, and for an upload session its Location and Range;
        `close` says the connection ends after it (RFC 9112 section 9.6)."""
        self.send_response(status)
        if close:
            self.send_header("Connection", "close")
        if upload_location is not None:
            name, upload_id, upload = upload_location
            self.send_header("Location", f"/v2/{name}/blobs/uploads/{upload_id}")
            self.send_header("Range", f"0-{max(upload.size - 1, 0)}")
            self.send_header("Docker-Upload-UUID", upload_id)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body:
            self.wfile.write(body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", required=True, help="127.0.0.1:PORT (loopback, IPv4)")
    parser.add_argument("--data", required=True, type=Path)
    arguments = parser.parse_args()
    host, _, port = arguments.listen.rpartition(":")
    if host not in ("127.0.0.1", "localhost") or not port.isdigit():
        parser.error("--listen takes 127.0.0.1:PORT: the floor sink listens on loopback only")
    with FloorSink((host, int(port)), arguments.data) as server:
        server.serve_forever()


if __name__ == "__main__":
    main()
