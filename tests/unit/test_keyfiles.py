"""Secret files are made once, private, and then only read."""

from __future__ import annotations

from pathlib import Path

from cangku.keyfiles import read_or_create


def test_secret_file_is_created_once_with_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "signing-key"
    assert read_or_create(path, lambda: b"first") == b"first"
    assert path.stat().st_mode & 0o777 == 0o600

    def must_not_run() -> bytes:
        raise AssertionError("an existing key is never replaced")

    assert read_or_create(path, must_not_run) == b"first"
    assert [p.name for p in path.parent.iterdir()] == ["signing-key"]  # no temporary left
