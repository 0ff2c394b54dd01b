"""Settings: defaults < YAML file < CANGKU_* environment < command-line flags."""

from __future__ import annotations

import ast
import logging
from pathlib import Path

import pytest
import uvicorn

from cangku import cli
from cangku.config import Settings, load_settings, split_listen, tracing_environment
from cangku.server import ZeroCopyHttpProtocol


def test_defaults_serve_loopback_port_5000_from_data() -> None:
    settings = load_settings()
    assert (settings.host, settings.port) == ("127.0.0.1", 5000)
    assert settings.data == Path("data")
    assert settings.auth.open is False
    assert settings.storage.fsync is False


def test_file_then_environment_then_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "cangku.yaml"
    config.write_text("listen: 127.0.0.1:6000\ndata: /srv/file\nstorage:\n  fsync: true\n")
    assert load_settings(config).listen == "127.0.0.1:6000"
    assert load_settings(config).storage.fsync is True

    monkeypatch.setenv("CANGKU_LISTEN", "127.0.0.1:7000")
    monkeypatch.setenv("CANGKU_AUTH__OPEN", "true")
    from_env = load_settings(config)
    assert from_env.listen == "127.0.0.1:7000"
    assert from_env.data == Path("/srv/file")
    assert from_env.auth.open is True
    assert from_env.storage.fsync is True  # nested keys merge, not replace

    from_flags = load_settings(config, listen="127.0.0.1:8000", data=Path("/srv/flag"))
    assert from_flags.listen == "127.0.0.1:8000"
    assert from_flags.data == Path("/srv/flag")


def test_unknown_keys_in_the_file_are_an_error(tmp_path: Path) -> None:
    config = tmp_path / "cangku.yaml"
    config.write_text("lisen: 127.0.0.1:6000\n")
    with pytest.raises(ValueError, match="lisen"):
        load_settings(config)


def test_file_that_is_not_a_mapping_is_an_error(tmp_path: Path) -> None:
    config = tmp_path / "cangku.yaml"
    config.write_text("- a\n- b\n")
    with pytest.raises(ValueError, match="mapping"):
        load_settings(config)


@pytest.mark.parametrize("listen", ["5000", "host", ":5000", "host:0", "host:70000", "host:http"])
def test_invalid_listen_is_refused(listen: str) -> None:
    with pytest.raises(ValueError):
        load_settings(listen=listen)


def test_ipv6_listen_address() -> None:
    assert split_listen("[::1]:5000") == ("::1", 5000)
    assert Settings(listen="[::1]:5000").listens_on_loopback()


@pytest.mark.parametrize(
    ("listen", "loopback"),
    [
        ("127.0.0.1:5000", True),
        ("localhost:5000", True),
        ("0.0.0.0:5000", False),
        ("10.1.2.3:80", False),
    ],
)
def test_loopback_detection(listen: str, loopback: bool) -> None:
    assert Settings(listen=listen).listens_on_loopback() is loopback


def record_server_runs(monkeypatch: pytest.MonkeyPatch) -> list[uvicorn.Config]:
    """Stand in for uvicorn.Server.run: record the config, start nothing, report success."""
    configs: list[uvicorn.Config] = []

    def run(server: uvicorn.Server, sockets: object = None) -> None:
        configs.append(server.config)
        server.started = True

    async def serve(server: uvicorn.Server, sockets: object = None) -> None:
        raise AssertionError("a unit test must not start a server (it would bind 0.0.0.0)")

    monkeypatch.setattr(uvicorn.Server, "run", run)
    monkeypatch.setattr(uvicorn.Server, "serve", serve)
    # uvicorn.Config applies uvicorn's logging config to the whole process; not from here.
    monkeypatch.setattr(uvicorn.Config, "configure_logging", lambda config: None)
    # Nor cangku's: its root handler would outlive the test (tests/unit/test_logging.py).
    monkeypatch.setattr("cangku.observability.configure_logging", lambda settings: None)
    return configs


def test_serving_beyond_loopback_without_authentication_warns_loudly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    started = record_server_runs(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="cangku"):
        assert (
            cli.main(["serve", "--listen", "0.0.0.0:5999", "--data", str(tmp_path), "--open"]) == 0
        )
    assert [(config.host, config.port) for config in started] == [("0.0.0.0", 5999)]
    assert started[0].http is ZeroCopyHttpProtocol  # Served as server_config says.
    assert "WITHOUT AUTHENTICATION" in caplog.text


def test_serving_on_loopback_does_not_warn(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    started = record_server_runs(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="cangku"):
        assert cli.main(["serve", "--listen", "127.0.0.1:5999", "--data", str(tmp_path)]) == 0
    assert len(started) == 1
    assert "WITHOUT AUTHENTICATION" not in caplog.text


def test_invalid_configuration_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["serve", "--listen", "nonsense", "--data", str(tmp_path)]) == 2
    assert "invalid configuration" in capsys.readouterr().err


def test_garbage_collection_and_upload_defaults() -> None:
    settings = load_settings()
    assert settings.gc.interval == 3600.0
    assert settings.gc.grace == 3600.0
    assert settings.gc.untagged == "keep"
    assert settings.gc.delete_untagged_after is None
    assert settings.uploads.expire == 86400.0


def test_durations_are_read_from_the_file_and_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "cangku.yaml"
    config.write_text("gc:\n  interval: 30m\n  untagged: delete-after 7d\nuploads:\n  expire: 2h\n")
    monkeypatch.setenv("CANGKU_GC__GRACE", "0")
    settings = load_settings(config)
    assert settings.gc.interval == 1800.0
    assert settings.gc.grace == 0.0
    assert settings.gc.delete_untagged_after == 7 * 86400.0
    assert settings.uploads.expire == 7200.0
    assert settings.model_dump()["gc"] == {
        "interval": "30m",
        "grace": "0",
        "untagged": "delete-after 7d",
    }


@pytest.mark.parametrize(
    "gc",
    [
        {"interval": "soon"},
        {"grace": "-1h"},
        {"untagged": "delete"},
        {"untagged": "delete-after"},
        {"untagged": "delete-after forever"},
        {"untagged": "keep 1h"},
    ],
)
def test_invalid_garbage_collection_settings_are_refused(gc: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        load_settings(gc=gc)


def test_operations_settings_from_file_and_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    defaults = load_settings()
    assert (defaults.log_format, defaults.shutdown_timeout) == ("text", 30.0)
    assert (defaults.metrics.enabled, defaults.metrics.listen) == (True, None)
    config = tmp_path / "cangku.yaml"
    config.write_text(
        "log_format: json\nshutdown_timeout: 2m\nmetrics: {listen: '127.0.0.1:9102'}\n"
    )
    loaded = load_settings(config)
    assert (loaded.log_format, loaded.shutdown_timeout) == ("json", 120.0)
    assert loaded.metrics.listen == "127.0.0.1:9102"
    monkeypatch.setenv("CANGKU_METRICS__ENABLED", "false")
    monkeypatch.setenv("CANGKU_SHUTDOWN_TIMEOUT", "5")
    from_env = load_settings(config)
    assert from_env.metrics.enabled is False
    assert from_env.shutdown_timeout == 5.0


@pytest.mark.parametrize(
    "text",
    ["log_format: xml\n", "shutdown_timeout: -1\n", "metrics: {listen: nonsense}\n"],
)
def test_invalid_operations_settings_are_refused(tmp_path: Path, text: str) -> None:
    config = tmp_path / "cangku.yaml"
    config.write_text(text)
    with pytest.raises(ValueError):
        load_settings(config)


def test_serve_passes_the_shutdown_timeout_to_the_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started = record_server_runs(monkeypatch)
    monkeypatch.setenv("CANGKU_SHUTDOWN_TIMEOUT", "7s")
    assert cli.main(["serve", "--data", str(tmp_path)]) == 0
    assert started[0].timeout_graceful_shutdown == 7.0


def test_the_initial_admin_password_is_a_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().admin_password is None
    monkeypatch.setenv("CANGKU_ADMIN_PASSWORD", "first-start-secret")
    settings = load_settings()
    assert settings.admin_password is not None
    assert settings.admin_password.get_secret_value() == "first-start-secret"
    # Never shown when the settings are logged or printed.
    assert "first-start-secret" not in repr(settings)
    assert "first-start-secret" not in settings.model_dump_json()


def test_tracing_reads_only_the_otel_variables() -> None:
    environ = {"OTEL_TRACES_EXPORTER": "console", "PATH": "/bin", "CANGKU_DATA": "/d"}
    assert tracing_environment(environ) == {"OTEL_TRACES_EXPORTER": "console"}


def test_only_the_config_module_reads_the_environment() -> None:
    """Settings are read through `cangku.config` alone: no other module of the package looks
    at os.environ or os.getenv (or imports them under another name)."""
    assert environment_readers(Path(cli.__file__).parent) == []


ENVIRONMENT = {"environ", "getenv", "environb"}


def environment_readers(package: Path) -> list[str]:
    """`file:line` of every read of the process environment outside config.py."""
    readers = []
    for path in sorted(package.rglob("*.py")):
        if path == package / "config.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            reads = (isinstance(node, ast.Attribute) and node.attr in ENVIRONMENT) or (
                isinstance(node, ast.ImportFrom)
                and node.module == "os"
                and bool({alias.name for alias in node.names} & ENVIRONMENT)
            )
            if reads:
                readers.append(f"{path.relative_to(package)}:{getattr(node, 'lineno', 0)}")
    return readers
