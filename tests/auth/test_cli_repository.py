"""`cangku repo describe` and `cangku repo pulls` (issue 17) on a data directory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cangku.auth.accounts import Accounts
from cangku.registry import Registry
from cangku.storage.filesystem import FilesystemStorage
from tests.auth.test_cli import run, with_accounts
from tests.web.conftest import store_image


def push_and_pull(data: Path, pulls: int) -> str:
    async def push(accounts: Accounts) -> str:
        registry = Registry(FilesystemStorage(data), accounts.metadata)
        digest = await store_image(registry, "jimo/app", "1.0.0")
        for _ in range(pulls):
            registry.pulls.record("jimo/app", "1.0.0", digest)
        await registry.pulls.flush()
        return digest

    return with_accounts(data, push)


def test_describe_sets_shows_and_unsets(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    push_and_pull(tmp_path, 0)
    overview = tmp_path / "README.md"
    overview.write_text("# App\n\nServes things.\n")
    code, out, err = run(
        capsys,
        monkeypatch,
        tmp_path,
        "repo",
        "describe",
        "jimo/app",
        "--description",
        "A small server",
        "--overview-file",
        str(overview),
    )
    assert code == 0, err
    assert "A small server  [set by its owners]" in out and "Serves things." in out
    # Only the description changes; the overview stays.
    code, out, _ = run(
        capsys,
        monkeypatch,
        tmp_path,
        "repo",
        "describe",
        "jimo/app",
        "--description",
        "Other",
        "--json",
    )
    document = json.loads(out)
    assert (document["description"], document["overview"]) == ("Other", "# App\n\nServes things.")
    code, out, _ = run(
        capsys,
        monkeypatch,
        tmp_path,
        "repo",
        "describe",
        "jimo/app",
        "--description",
        "",
        "--clear-overview",
    )
    assert "(no description)  [not set]" in out


def test_describe_refuses_bad_input_clearly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    push_and_pull(tmp_path, 0)
    code, _, err = run(
        capsys, monkeypatch, tmp_path, "repo", "describe", "jimo/app", "--description", "x" * 101
    )
    assert code == 1 and "at most 100" in err
    code, _, err = run(capsys, monkeypatch, tmp_path, "repo", "describe", "jimo/none")
    assert code == 1 and "not known" in err


def test_pulls_prints_counts_per_tag_and_digest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    digest = push_and_pull(tmp_path, 4)
    code, out, err = run(capsys, monkeypatch, tmp_path, "repo", "pulls", "jimo/app", "--json")
    assert code == 0, err
    document = json.loads(out)
    assert document["pulls"] == 4
    assert document["tags"]["1.0.0"]["pulls"] == 4
    assert document["manifests"][digest]["pulls"] == 4
    code, out, _ = run(capsys, monkeypatch, tmp_path, "repo", "pulls", "jimo/app")
    assert out.startswith("jimo/app: 4 pulls")
