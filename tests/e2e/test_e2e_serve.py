"""`cangku serve` as a process: how it ends when it cannot start, and on Ctrl-C."""

from __future__ import annotations

import signal
import socket
import subprocess
from pathlib import Path

import pytest

from .conftest import RegistryServer, RegistryServerFactory, server_kind

pytestmark = pytest.mark.e2e


@pytest.fixture(autouse=True)
def cangku_only() -> None:
    if server_kind() != "cangku":
        pytest.skip("exit codes of `cangku serve`")


def test_a_port_in_use_ends_serve_with_exit_code_3(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        server = RegistryServer(
            kind="cangku",
            data_dir=tmp_path / "data",
            log_path=tmp_path / "serve.log",
            port=taken.getsockname()[1],
        )
        result = subprocess.run(server.command(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 3, result.stderr
    assert "address already in use" in result.stderr


def test_ctrl_c_stops_serve_cleanly(registry_factory: RegistryServerFactory) -> None:
    server = registry_factory.start()
    assert server.process is not None
    server.process.send_signal(signal.SIGINT)
    assert server.process.wait(timeout=60) == 0, server.log_tail()
    assert "Traceback" not in server.log_tail(), server.log_tail()
