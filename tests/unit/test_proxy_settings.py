"""`proxy.upstreams` (issue 13, docs/proxy.md): the issue's shape, from a file or as JSON in
CANGKU_PROXY__UPSTREAMS; hostile values refused at start."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from cangku.config import ProxySettings, UpstreamSettings, load_settings


def test_the_issue_shape_loads_from_a_file(tmp_path: Path) -> None:
    secret = tmp_path / "dockerhub"
    secret.write_text("s3cret\n")
    config = tmp_path / "cangku.yaml"
    config.write_text(
        "proxy:\n"
        "  upstreams:\n"
        "    - name: docker.io\n"
        "      url: https://registry-1.docker.io/\n"
        "      default: true\n"
        "      username: ci-bot\n"
        f"      password_file: {secret}\n"
        "      revalidate: 5m\n"
        "    - name: ghcr.io\n"
        "      url: https://ghcr.io\n"
    )
    proxy = load_settings(config).proxy
    docker = proxy.upstream("docker.io")
    assert docker is not None and proxy.default is docker
    assert docker.url == "https://registry-1.docker.io"
    assert docker.revalidate == 300.0
    assert docker.read_password() == "s3cret"
    ghcr = proxy.upstream("ghcr.io")
    assert ghcr is not None and not ghcr.default and ghcr.read_password() is None
    assert proxy.upstream("quay.io") is None


def test_upstreams_come_from_the_environment_as_json(monkeypatch: pytest.MonkeyPatch) -> None:
    upstreams = [{"name": "docker.io", "url": "http://127.0.0.1:5001", "default": True}]
    monkeypatch.setenv("CANGKU_PROXY__UPSTREAMS", json.dumps(upstreams))
    proxy = load_settings(None).proxy
    assert [(u.name, u.url, u.default) for u in proxy.upstreams] == [
        ("docker.io", "http://127.0.0.1:5001", True)
    ]


def test_no_upstreams_by_default() -> None:
    assert ProxySettings().upstreams == [] and ProxySettings().default is None


def test_eviction_and_access_settings_load(tmp_path: Path) -> None:
    config = tmp_path / "cangku.yaml"
    config.write_text(
        "proxy:\n"
        "  upstreams:\n"
        "    - name: docker.io\n"
        "      url: https://registry-1.docker.io\n"
        "    - name: ghcr.io\n"
        "      url: https://ghcr.io\n"
        "      public: false\n"
        "  max_size: 200GiB\n"
        "  evict_after: 30d\n"
    )
    proxy = load_settings(config).proxy
    assert proxy.max_size == 200 * 1024**3 and proxy.evict_after == 30 * 86400.0
    assert [u.public for u in proxy.upstreams] == [True, False]
    unlimited = ProxySettings()
    assert unlimited.max_size is None and unlimited.evict_after is None


@pytest.mark.parametrize(
    "fields",
    [
        {"max_size": "lots"},
        {"max_size": -1},
        {"max_size": True},
        {"max_size": [1]},
        {"evict_after": "0"},
        {"evict_after": "-1d"},
        {"evict_after": [1]},
        {"evict_after": {"d": 1}},
    ],
)
def test_hostile_eviction_settings_are_refused(fields: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        ProxySettings.model_validate(fields)


@pytest.mark.parametrize(
    "fields",
    [
        {"name": "docker.io/library", "url": "https://x.test"},
        {"name": "Docker.io", "url": "https://x.test"},
        {"name": "", "url": "https://x.test"},
        {"name": "docker.io", "url": "ftp://x.test"},
        {"name": "docker.io", "url": "x.test"},
        {"name": "docker.io", "url": "https://"},
        {"name": "docker.io", "url": "https://x.test/v2"},
        {"name": "docker.io", "url": "https://user:pw@x.test"},
        {"name": "docker.io", "url": "https://x.test?a=b"},
        {"name": "docker.io", "url": "https://x.test", "password": "p"},
        {
            "name": "docker.io",
            "url": "https://x.test",
            "username": "u",
            "password": "p",
            "password_file": "/run/secrets/p",
        },
        {"name": "docker.io", "url": "https://x.test", "revalidate": "-1"},
        {"name": "docker.io", "url": "https://x.test", "max_size": "1GiB"},
        {"name": "docker.io", "url": "https://x.test", "public": "maybe"},
    ],
)
def test_hostile_upstreams_are_refused(fields: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        UpstreamSettings.model_validate(fields)


def test_names_are_distinct_and_one_default_at_most() -> None:
    with pytest.raises(ValidationError, match="same name"):
        ProxySettings.model_validate(
            {
                "upstreams": [
                    {"name": "a.io", "url": "http://a"},
                    {"name": "a.io", "url": "http://b"},
                ]
            }
        )
    with pytest.raises(ValidationError, match="at most one"):
        ProxySettings.model_validate(
            {
                "upstreams": [
                    {"name": "a.io", "url": "http://a", "default": True},
                    {"name": "b.io", "url": "http://b", "default": True},
                ]
            }
        )


def test_the_password_is_never_shown() -> None:
    upstream = UpstreamSettings.model_validate(
        {"name": "docker.io", "url": "https://x.test", "username": "u", "password": "hunter2"}
    )
    assert "hunter2" not in repr(upstream) and "hunter2" not in str(upstream.model_dump())
    assert upstream.read_password() == "hunter2"
