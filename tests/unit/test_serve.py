"""`cangku serve` as a process: what it does when it cannot start."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path


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
