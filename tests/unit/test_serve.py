"""`cangku serve` as a process: how it ends when it cannot start, and on Ctrl-C."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def test_a_port_in_use_ends_serve_with_exit_code_3(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        listen, data = f"127.0.0.1:{port}", str(tmp_path / "data")
        result = subprocess.run(
            [sys.executable, "-m", "cangku", "serve", "--listen", listen, "--data", data, "--open"],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert result.returncode == 3, result.stderr
    assert "address already in use" in result.stderr


def test_ctrl_c_stops_serve_cleanly(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    listen, data = f"127.0.0.1:{port}", str(tmp_path / "data")
    server = subprocess.Popen(
        [sys.executable, "-m", "cangku", "serve", "--listen", listen, "--data", data, "--open"],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://{listen}/v2/", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert server.poll() is None and time.monotonic() < deadline, "serve did not start"
            time.sleep(0.1)
        server.send_signal(signal.SIGINT)
        _, stderr = server.communicate(timeout=60)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    assert server.returncode == 0, stderr
    assert "Traceback" not in stderr, stderr
