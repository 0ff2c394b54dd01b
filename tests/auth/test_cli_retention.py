"""`cangku retention` and `cangku gc` with a policy (issue 17), on a data directory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cangku.auth.accounts import Accounts
from cangku.registry import Registry
from cangku.storage.filesystem import FilesystemStorage
from tests.auth.test_cli import run, with_accounts
from tests.web.conftest import store_image

VERSIONS = ["1.0.0", "1.0.1", "1.0.2", "1.1.0", "1.1.1"]


def push_versions(data: Path) -> None:
    async def push(accounts: Accounts) -> None:
        registry = Registry(FilesystemStorage(data), accounts.metadata)
        for version in VERSIONS:
            await store_image(registry, "jimo/app", version)

    with_accounts(data, push)


def tags_left(data: Path) -> list[str]:
    async def look(accounts: Accounts) -> list[str]:
        registry = Registry(FilesystemStorage(data), accounts.metadata)
        return (await registry.repository("jimo/app").tags.list(None, None)).items

    return with_accounts(data, look)


def test_set_list_dry_run_and_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    push_versions(tmp_path)
    code, out, err = run(
        capsys,
        monkeypatch,
        tmp_path,
        "retention",
        "set",
        "--namespace",
        "jimo",
        "--keep-patches",
        "1",
    )
    assert code == 0, err
    assert "namespace jimo: keep the newest 1 releases of each MAJOR.MINOR line" in out
    assert "namespace jimo" in run(capsys, monkeypatch, tmp_path, "retention", "list")[1]

    code, out, _ = run(capsys, monkeypatch, tmp_path, "retention", "run", "jimo/app", "--dry-run")
    assert "would delete jimo/app:1.0.0  (namespace policy)" in out
    assert "    not among the newest 1 of the 1.0 line (#3)" in out
    assert "would delete 3 tags" in out
    assert set(VERSIONS) <= set(tags_left(tmp_path))

    code, out, _ = run(capsys, monkeypatch, tmp_path, "gc", "--dry-run")
    assert "would delete jimo/app:1.1.0" in out
    assert set(VERSIONS) <= set(tags_left(tmp_path))

    code, out, _ = run(capsys, monkeypatch, tmp_path, "gc")
    assert code == 0 and "deleted jimo/app:1.0.1" in out
    left = tags_left(tmp_path)
    assert {"1.0.2", "1.1.1", "1", "1.0", "1.1", "latest"} == set(left)

    code, out, _ = run(capsys, monkeypatch, tmp_path, "retention", "run", "--all", "--json")
    assert json.loads(out) == []


def test_refusals_are_clear(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    push_versions(tmp_path)
    code, _, err = run(capsys, monkeypatch, tmp_path, "retention", "set", "--server")
    assert code == 1 and "at least one --keep" in err
    code, _, err = run(
        capsys, monkeypatch, tmp_path, "retention", "set", "--server", "--keep-tags", "("
    )
    assert code == 1 and "keep_tags pattern" in err
    code, _, err = run(
        capsys,
        monkeypatch,
        tmp_path,
        "retention",
        "set",
        "--namespace",
        "a/b",
        "--keep-pushed",
        "3",
    )
    assert code == 1 and "namespace" in err
    code, _, err = run(capsys, monkeypatch, tmp_path, "retention", "run", "jimo/none", "--dry-run")
    assert code == 1 and "not known" in err
