"""The benchmark's `--full-page-cache` ballast: it writes until free memory is down, rotates
its files within a cap on disk, and stops at the cap when memory never comes down."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

MiB = 1 << 20


def small_ballast(module: ModuleType, directory: Path) -> Any:
    """A ballast in MiB-sized steps: keep 10 MiB free, 2 MiB files, at most 12 MiB on disk."""

    class SmallBallast(module.PageCacheBallast):  # type: ignore[name-defined]
        KEEP_FREE_MIB = 10
        FILE_MIB = 2
        CHECK_MIB = 1
        WRITE_KIB = 256

    directory.mkdir()
    return SmallBallast(directory=directory, cap_mib=12)


class FakeMemory:
    """Free memory that each MiB the ballast writes takes, and that deleting its files does
    not give back (DAMON reclaimed their pages long before)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.free_at_reset = 0
        self.written_at_reset = 0
        self.sizes: dict[str, int] = {}  # every file ever seen, its largest size

    def reset(self, free_mib: int) -> None:
        self.free_at_reset = free_mib
        self.written_at_reset = sum(self.sizes.values())

    def __call__(self) -> int:
        for path in self.directory.iterdir():
            self.sizes[path.name] = max(self.sizes.get(path.name, 0), path.stat().st_size)
        return self.free_at_reset - (sum(self.sizes.values()) - self.written_at_reset) // MiB


def test_writes_until_free_memory_is_down_and_rotates_within_the_cap(
    registry_benchmark: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ballast = small_ballast(registry_benchmark, tmp_path / "ballast")
    memory = FakeMemory(ballast.directory)
    monkeypatch.setattr(registry_benchmark, "free_memory_mib", memory)
    memory.reset(13)
    ballast.write_until_free("filled")
    assert memory() == 10
    assert [(path.name, size) for path, size in ballast.files] == [("000001", 2), ("000002", 1)]

    # Free memory grew back by 10 MiB: the top-up writes 10 MiB of new files, deleting the
    # oldest first so that no more than 12 MiB are on disk.
    memory.reset(20)
    ballast.top_up()
    assert memory() == 10
    on_disk = sorted(path.name for path in ballast.directory.iterdir())
    assert on_disk == [path.name for path, _ in ballast.files]
    assert on_disk[0] == "000002"
    assert sum(path.stat().st_size for path in ballast.directory.iterdir()) <= 12 * MiB


def test_a_top_up_is_skipped_while_free_memory_is_low(
    registry_benchmark: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ballast = small_ballast(registry_benchmark, tmp_path / "ballast")
    monkeypatch.setattr(registry_benchmark, "free_memory_mib", lambda: 15)  # 1.5 x 10
    ballast.top_up()
    assert list(ballast.directory.iterdir()) == []


def test_stops_after_twice_the_excess_when_free_memory_never_comes_down(
    registry_benchmark: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ballast = small_ballast(registry_benchmark, tmp_path / "ballast")
    calls = iter(range(1000))

    def stays_at_20_mib() -> int:
        next(calls)  # a loop without its bound fails here (StopIteration) rather than hang
        return 20

    monkeypatch.setattr(registry_benchmark, "free_memory_mib", stays_at_20_mib)
    ballast.write_until_free("filled")
    assert ballast.made == 11  # 2 x (20 - 10) MiB and a file more, in files of 2 MiB
    assert sum(path.stat().st_size for path in ballast.directory.iterdir()) <= 12 * MiB


def test_fill_refuses_a_disk_without_room_and_a_memory_that_stays_free(
    registry_benchmark: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    memory_mib = registry_benchmark.meminfo_mib("MemTotal")
    disk = shutil.disk_usage(tmp_path)
    rows_mib = 12 * 1024
    little_room = disk._replace(free=(memory_mib + 4 * 1024 + rows_mib - 1) * MiB)
    monkeypatch.setattr(registry_benchmark.shutil, "disk_usage", lambda _: little_room)
    with pytest.raises(RuntimeError, match="free on disk"):
        registry_benchmark.PageCacheBallast.fill(tmp_path, rows_mib)
    assert list(tmp_path.iterdir()) == []

    room = disk._replace(free=(memory_mib + 4 * 1024 + rows_mib) * MiB)
    monkeypatch.setattr(registry_benchmark.shutil, "disk_usage", lambda _: room)
    # Free memory "comes down" to 0 only when /proc/meminfo cannot be read.
    monkeypatch.setattr(registry_benchmark, "free_memory_mib", lambda: 0)
    with pytest.raises(RuntimeError, match="0 MiB still free"):
        registry_benchmark.PageCacheBallast.fill(tmp_path, rows_mib)
