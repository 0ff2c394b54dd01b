"""`python -m cangku.healthcheck`, the image's HEALTHCHECK: which URL it asks."""

from __future__ import annotations

from pathlib import Path

import pytest

from cangku import healthcheck


@pytest.mark.parametrize(
    ("config", "url"),
    [
        ("listen: 0.0.0.0:5000\n", "http://127.0.0.1:5000/readyz"),
        ("listen: 127.0.0.1:6000\n", "http://127.0.0.1:6000/readyz"),
        ("listen: '[::]:5000'\n", "http://[::1]:5000/readyz"),
        (
            "listen: 0.0.0.0:443\ntls_cert: /c.pem\ntls_key: /k.pem\n",
            "https://127.0.0.1:443/readyz",
        ),
    ],
)
def test_it_asks_readyz_where_the_server_listens(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, config: str, url: str
) -> None:
    path = tmp_path / "config.yml"
    path.write_text(config)
    monkeypatch.setenv("CANGKU_CONFIG_FILE", str(path))
    assert healthcheck.readiness_url() == url


def test_the_environment_overrides_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "config.yml"
    path.write_text("listen: 0.0.0.0:5000\n")
    monkeypatch.setenv("CANGKU_CONFIG_FILE", str(path))
    monkeypatch.setenv("CANGKU_LISTEN", "0.0.0.0:7000")
    assert healthcheck.readiness_url() == "http://127.0.0.1:7000/readyz"


def test_no_answer_is_unhealthy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "config.yml"
    path.write_text("listen: 127.0.0.1:1\n")  # nothing listens on port 1
    monkeypatch.setenv("CANGKU_CONFIG_FILE", str(path))
    assert healthcheck.main() == 1
