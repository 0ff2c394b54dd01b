"""examples/: every configuration file is one `cangku serve` accepts, as the image reads it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from cangku.config import load_settings

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
CONFIGS = sorted(EXAMPLES.glob("config-*.yml"))


def test_there_is_one_example_per_feature() -> None:
    assert len(CONFIGS) >= 8


@pytest.mark.parametrize("config", CONFIGS, ids=lambda path: path.name)
def test_example_configuration_loads(config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [key for key in os.environ if key.startswith("CANGKU_")]:
        monkeypatch.delenv(name)
    settings = load_settings(config)
    # Each serves the image's port and volume, whatever else it sets.
    assert settings.listen == "0.0.0.0:5000"
    assert settings.data == Path("/var/lib/registry")


def test_the_image_default_configuration_loads() -> None:
    settings = load_settings(EXAMPLES.parent / "docker" / "config.yml")
    assert (settings.listen, settings.data) == ("0.0.0.0:5000", Path("/var/lib/registry"))


def test_tracing_example_names_only_standard_variables() -> None:
    lines = (EXAMPLES / "tracing.env").read_text().splitlines()
    names = [line.split("=", 1)[0] for line in lines if line and not line.startswith("#")]
    assert names and all(name.startswith("OTEL_") for name in names)


def test_prometheus_example_scrapes_metrics() -> None:
    (job,) = yaml.safe_load((EXAMPLES / "prometheus.yml").read_text())["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
