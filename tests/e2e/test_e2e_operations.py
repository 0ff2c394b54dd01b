"""How a real `cangku serve` process is operated: SIGTERM with a limit, JSON logs, metrics on
a listener of their own."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import time

import pytest

from .conftest import RegistryServer, RegistryServerFactory, free_loopback_port, http_client

pytestmark = pytest.mark.e2e

SHUTDOWN_TIMEOUT = 2.0
# uvicorn ends a graceful shutdown by raising the signal again (the shell sees SIGTERM).
TERMINATED = -signal.SIGTERM


def raw_connection(server: RegistryServer) -> socket.socket:
    connection = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    return connection


def read_response_head(connection: socket.socket) -> bytes:
    head = b""
    while b"\r\n\r\n" not in head:
        data = connection.recv(1)
        assert data, f"connection closed after {head!r}"
        head += data
    return head


def wait_for_exit(server: RegistryServer, limit: float) -> tuple[int | None, float]:
    assert server.process is not None
    started = time.monotonic()
    while time.monotonic() - started < limit:
        code = server.process.poll()
        if code is not None:
            return code, time.monotonic() - started
        time.sleep(0.05)
    return None, time.monotonic() - started


def cangku_only(server: RegistryServer) -> None:
    if server.kind != "cangku":
        pytest.skip("cangku's own settings")


def test_sigterm_lets_a_running_upload_finish(registry_factory: RegistryServerFactory) -> None:
    server = registry_factory.start(extra_env={"CANGKU_SHUTDOWN_TIMEOUT": "10s"})
    cangku_only(server)
    with http_client(base_url=server.url) as client:
        start = client.post("/v2/jimo/slow/blobs/uploads/")
        assert start.status_code == 202
        location = start.headers["Location"]
    body = os.urandom(200_000)
    connection = raw_connection(server)
    with connection:
        request_head = (
            f"PATCH {location} HTTP/1.1\r\nHost: {server.host}\r\n"
            "Content-Type: application/octet-stream\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        connection.sendall(request_head.encode() + body[:1000])
        time.sleep(0.3)  # the request is running: its handler waits for the rest of the body
        assert server.process is not None
        server.process.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        # No new connections once SIGTERM arrived...
        with pytest.raises(OSError), socket.create_connection(("127.0.0.1", server.port), 2):
            pass
        # ...but the running request completes.
        connection.sendall(body[1000:])
        head = read_response_head(connection)
    assert head.startswith(b"HTTP/1.1 202 "), head
    assert b"range: 0-199999" in head.lower()
    code, _ = wait_for_exit(server, 10)
    assert code == TERMINATED, server.log_tail()
    server.process = None


def test_sigterm_exits_after_shutdown_timeout_when_a_client_stops_reading(
    registry_factory: RegistryServerFactory,
) -> None:
    server = registry_factory.start(extra_env={"CANGKU_SHUTDOWN_TIMEOUT": f"{SHUTDOWN_TIMEOUT}"})
    cangku_only(server)
    blob = os.urandom(64 * 1024 * 1024)  # far more than the socket buffers hold
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    with http_client(base_url=server.url, timeout=60) as client:
        pushed = client.post("/v2/jimo/big/blobs/uploads/", params={"digest": digest}, content=blob)
        assert pushed.status_code == 201, pushed.text
    connection = raw_connection(server)
    with connection:
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        connection.sendall(f"GET /v2/jimo/big/blobs/{digest} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        head = read_response_head(connection)
        assert head.startswith(b"HTTP/1.1 200 "), head
        connection.recv(1000)
        # ...and reads no more: the server's send waits for a reader that never comes.
        time.sleep(0.5)
        assert server.process is not None
        server.process.send_signal(signal.SIGTERM)
        code, took = wait_for_exit(server, SHUTDOWN_TIMEOUT + 10)
    assert code is not None, f"still running {took:.1f}s after SIGTERM\n{server.log_tail()}"
    assert code == TERMINATED, server.log_tail()
    # It gave the request its time, then stopped waiting.
    assert SHUTDOWN_TIMEOUT - 0.2 <= took <= SHUTDOWN_TIMEOUT + 5, took
    assert "timeout graceful shutdown exceeded" in server.log_tail()
    server.process = None


def test_json_logs_and_metrics_on_a_listener_of_their_own(
    registry_factory: RegistryServerFactory,
) -> None:
    metrics_port = free_loopback_port()
    server = registry_factory.start(
        extra_env={
            "CANGKU_LOG_FORMAT": "json",
            "CANGKU_METRICS__LISTEN": f"127.0.0.1:{metrics_port}",
        }
    )
    cangku_only(server)
    with http_client(base_url=server.url) as client:
        answered = client.get("/v2/jimo/app/tags/list", params={"n": "1", "token": "s3cr3t"})
        request_id = answered.headers["x-request-id"]
        assert client.get("/metrics").status_code == 404  # only on its own listener
        with http_client() as scraper:
            metrics = scraper.get(f"http://127.0.0.1:{metrics_port}/metrics")
        assert metrics.status_code == 200
        assert 'route="v2.tags"' in metrics.text
        assert "jimo" not in metrics.text
    server.stop()

    text = server.log_path.read_text()
    lines = [line for line in text.splitlines() if line and not line.startswith("--- starting")]
    entries = [json.loads(line) for line in lines]  # every line is one JSON object
    access = [e for e in entries if e.get("request_id") == request_id]
    assert len(access) == 1, access
    (line,) = access
    assert line["logger"] == "cangku.access"
    assert (line["method"], line["path"], line["status"]) == ("GET", "/v2/jimo/app/tags/list", 404)
    assert {"bytes", "duration_ms", "user", "time", "level", "message"} <= line.keys()
    assert "s3cr3t" not in text
    assert any(e["logger"].startswith("uvicorn") for e in entries)  # uvicorn's own lines too
