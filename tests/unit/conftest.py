"""The benchmark scripts as modules, for the tests of their parts (benchmarks/ is no package)."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

BENCHMARKS = Path(__file__).parents[2] / "benchmarks"


def load_benchmark(name: str) -> Iterator[ModuleType]:
    """benchmarks/<name>.py, registered in sys.modules while the caller uses it."""
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[spec.name]


@pytest.fixture(scope="module")
def registry_benchmark() -> Iterator[ModuleType]:
    yield from load_benchmark("registry_benchmark")


@pytest.fixture(scope="module")
def floor_sink() -> Iterator[ModuleType]:
    yield from load_benchmark("floor_sink")
