"""Where SQL may live: only `metadata/` talks SQLAlchemy (issue 11)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parents[2] / "src" / "cangku"


def imported_modules(path: Path) -> set[str]:
    modules: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None and not node.level:
            modules.add(node.module)
    return modules


@pytest.mark.parametrize("package", ["auth", "web"])
def test_accounts_and_pages_reach_the_database_only_through_metadata(package: str) -> None:
    files = sorted((SOURCE / package).rglob("*.py"))
    assert files, f"no sources found under {SOURCE / package}"
    offenders = [
        str(path.relative_to(SOURCE))
        for path in files
        if any(module.split(".")[0] == "sqlalchemy" for module in imported_modules(path))
    ]
    assert offenders == []
