"""The account commands, run as a person would, against a data directory."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import bcrypt
import pytest
from sqlalchemy import select

from cangku import cli
from cangku.auth.accounts import Accounts
from cangku.metadata.schema import repositories as repositories_table
from cangku.metadata.schema import users
from cangku.metadata.store import MetadataStore, sqlite_url
from cangku.registry import Registry
from cangku.storage.filesystem import FilesystemStorage
from tests.web.conftest import store_image

T = TypeVar("T")


def run(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    data: Path,
    *args: str,
    stdin: str = "",
) -> tuple[int, str, str]:
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    code = cli.main([*args, "--data", str(data)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def with_accounts(data: Path, work: Callable[[Accounts], Awaitable[T]]) -> T:
    """Look at the data directory as the server would, after a command ran."""

    async def look() -> T:
        store = MetadataStore.open(sqlite_url(data))
        try:
            return await work(Accounts(store))
        finally:
            await store.close()

    return asyncio.run(look())


def authenticate(data: Path, name: str, secret: str) -> bool:
    async def check(accounts: Accounts) -> bool:
        return await accounts.authenticate(name, secret) is not None

    return with_accounts(data, check)


def test_user_lifecycle(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert (
        run(
            capsys,
            monkeypatch,
            tmp_path,
            "user",
            "add",
            "jimo",
            "--password-stdin",
            stdin="first-password\n",
        )[0]
        == 0
    )
    assert (
        run(
            capsys,
            monkeypatch,
            tmp_path,
            "user",
            "add",
            "boss",
            "--admin",
            "--password-stdin",
            stdin="boss-password\n",
        )[0]
        == 0
    )
    assert run(capsys, monkeypatch, tmp_path, "user", "list")[1] == "boss  (admin)\njimo\n"
    assert authenticate(tmp_path, "jimo", "first-password")
    assert (
        run(
            capsys,
            monkeypatch,
            tmp_path,
            "user",
            "passwd",
            "jimo",
            "--password-stdin",
            stdin="second-password\n",
        )[0]
        == 0
    )
    assert not authenticate(tmp_path, "jimo", "first-password")
    assert authenticate(tmp_path, "jimo", "second-password")
    assert run(capsys, monkeypatch, tmp_path, "user", "disable", "jimo")[0] == 0
    assert not authenticate(tmp_path, "jimo", "second-password")
    assert run(capsys, monkeypatch, tmp_path, "user", "enable", "jimo")[0] == 0
    assert run(capsys, monkeypatch, tmp_path, "user", "del", "jimo")[0] == 0
    code, _, err = run(capsys, monkeypatch, tmp_path, "user", "del", "jimo")
    assert code == 1 and "no user 'jimo'" in err


def test_refusals_are_clear(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, _, err = run(
        capsys, monkeypatch, tmp_path, "user", "add", "jimo", "--password-stdin", stdin="short\n"
    )
    assert code == 1 and "at least 8 characters" in err
    code, _, err = run(
        capsys,
        monkeypatch,
        tmp_path,
        "user",
        "add",
        "Jimo",
        "--password-stdin",
        stdin="long-enough-1\n",
    )
    assert code == 1 and "invalid name" in err
    code, _, err = run(
        capsys, monkeypatch, tmp_path, "user", "add", "jimo", "--password-stdin", stdin=""
    )
    assert code == 1 and "no password" in err


def test_import_htpasswd_takes_bcrypt_entries(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    hashed = (
        bcrypt.hashpw(b"imported-password", bcrypt.gensalt(rounds=4))
        .decode()
        .replace("$2b$", "$2y$")
    )
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text(f"# users\nalice:{hashed}\nbob:{{SHA}}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n")
    code, out, err = run(
        capsys, monkeypatch, tmp_path / "data", "user", "import-htpasswd", str(htpasswd)
    )
    assert code == 1  # one entry skipped
    assert out == "added user alice\n"
    assert "bob" in err and "not a bcrypt hash" in err
    assert authenticate(tmp_path / "data", "alice", "imported-password")


def test_organizations_tokens_and_visibility(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    run(
        capsys,
        monkeypatch,
        tmp_path,
        "user",
        "add",
        "jimo",
        "--password-stdin",
        stdin="jimo-password\n",
    )
    assert run(capsys, monkeypatch, tmp_path, "org", "add", "acme")[0] == 0
    assert (
        run(
            capsys,
            monkeypatch,
            tmp_path,
            "org",
            "member",
            "add",
            "acme",
            "jimo",
            "--role",
            "writer",
        )[0]
        == 0
    )
    assert run(capsys, monkeypatch, tmp_path, "org", "list")[1] == "acme\n  jimo  writer\n"
    assert run(capsys, monkeypatch, tmp_path, "org", "member", "remove", "acme", "jimo")[0] == 0
    assert run(capsys, monkeypatch, tmp_path, "org", "list")[1] == "acme\n"

    code, out, err = run(
        capsys, monkeypatch, tmp_path, "token", "create", "jimo", "--name", "ci", "--scope", "write"
    )
    token = out.strip()
    assert code == 0 and token.startswith("ckt_") and "shown only this once" in err
    assert authenticate(tmp_path, "jimo", token)
    listing = run(capsys, monkeypatch, tmp_path, "token", "list", "jimo")[1]
    assert " ci  write " in listing and "active" in listing and token not in listing
    assert run(capsys, monkeypatch, tmp_path, "token", "revoke", "jimo", "ci")[0] == 0
    assert not authenticate(tmp_path, "jimo", token)
    assert "revoked" in run(capsys, monkeypatch, tmp_path, "token", "list", "jimo")[1]
    tokens = [
        run(
            capsys, monkeypatch, tmp_path, "token", "create", "jimo", "--name", n, "--scope", "read"
        )[1].strip()
        for n in ("ci", "laptop")
    ]
    assert run(capsys, monkeypatch, tmp_path, "token", "revoke", "jimo")[0] == 2
    revoked = run(capsys, monkeypatch, tmp_path, "token", "revoke", "jimo", "--all")
    assert revoked[:2] == (0, "revoked 2 tokens of jimo\n")
    assert not any(authenticate(tmp_path, "jimo", secret) for secret in tokens)

    assert (
        run(capsys, monkeypatch, tmp_path, "repo", "set", "jimo/app", "--public")[1]
        == "jimo/app is now public\n"
    )

    def public() -> bool:
        return with_accounts(tmp_path, lambda accounts: accounts.is_public("jimo/app"))

    assert public()
    run(capsys, monkeypatch, tmp_path, "repo", "set", "jimo/app", "--private")
    assert not public()


def test_imported_cheap_hashes_are_upgraded_at_the_first_login(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from cangku.auth import passwords

    monkeypatch.setattr(passwords, "BCRYPT_ROUNDS", 6)
    cheap = bcrypt.hashpw(b"imported-password", bcrypt.gensalt(rounds=4)).decode()
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text(f"alice:{cheap}\n")
    run(capsys, monkeypatch, tmp_path / "data", "user", "import-htpasswd", str(htpasswd))
    assert authenticate(tmp_path / "data", "alice", "imported-password")

    async def stored_cost(accounts: Accounts) -> int:
        stored = await accounts.metadata.read(
            lambda c: c.scalar(select(users.c.password_hash).where(users.c.name == "alice"))
        )
        assert stored is not None
        return passwords.bcrypt_cost(stored)

    assert with_accounts(tmp_path / "data", stored_cost) == 6
    assert authenticate(tmp_path / "data", "alice", "imported-password")


def test_deleting_a_user_with_images_needs_delete_repositories(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    add = ("user", "add", "jimo", "--password-stdin")
    assert run(capsys, monkeypatch, tmp_path, *add, stdin="first-password\n")[0] == 0

    async def push(accounts: Accounts) -> None:
        await store_image(
            Registry(FilesystemStorage(tmp_path), accounts.metadata), "jimo/app", "v1"
        )

    with_accounts(tmp_path, push)
    code, _, err = run(capsys, monkeypatch, tmp_path, "user", "del", "jimo")
    assert code == 1 and "--delete-repositories" in err
    assert authenticate(tmp_path, "jimo", "first-password")
    assert (
        run(capsys, monkeypatch, tmp_path, "user", "del", "jimo", "--delete-repositories")[0] == 0
    )
    assert not authenticate(tmp_path, "jimo", "first-password")

    async def repositories(accounts: Accounts) -> list[str]:
        rows = await accounts.metadata.read(
            lambda c: c.scalars(select(repositories_table.c.name)).all()
        )
        return list(rows)

    assert with_accounts(tmp_path, repositories) == []
