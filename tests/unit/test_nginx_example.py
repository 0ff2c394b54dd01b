"""examples/nginx-scale-out.conf (docs/scale-out.md) is a configuration nginx accepts."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.tls import make_tls_files

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "nginx-scale-out.conf"


def test_nginx_accepts_the_scale_out_example(tmp_path: Path) -> None:
    nginx = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")
    if nginx is None:
        if os.environ.get("CANGKU_REQUIRE_CLIENTS") == "1":
            pytest.fail("nginx is not installed (CANGKU_REQUIRE_CLIENTS=1)", pytrace=False)
        pytest.skip("nginx is not installed")
    tls = make_tls_files(tmp_path / "tls", [])
    text = EXAMPLE.read_text()
    assert "/etc/nginx/tls/registry.crt" in text and "/etc/nginx/tls/registry.key" in text
    config = tmp_path / "nginx.conf"
    config.write_text(
        text.replace("/etc/nginx/tls/registry.crt", str(tls.cert)).replace(
            "/etc/nginx/tls/registry.key", str(tls.key)
        )
    )

    checked = subprocess.run(
        [nginx, "-t", "-c", str(config), "-g", f"pid {tmp_path / 'nginx.pid'};"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )

    assert checked.returncode == 0, checked.stderr
    assert "test is successful" in checked.stderr
