"""Every SQL statement lives in `cangku.metadata` (issue 11): no other module imports
SQLAlchemy (the list of modules still waiting for their move is empty and stays so)."""

from __future__ import annotations

import re
from pathlib import Path

import cangku

SOURCE = Path(cangku.__file__).parent
# Every move is done (the tag rules' SQL was the last, into metadata/tags.py).
NOT_YET_MOVED: set[str] = set()
IMPORT = re.compile(r"^\s*(?:from|import)\s+sqlalchemy\b", re.MULTILINE)


def test_only_metadata_imports_sqlalchemy() -> None:
    importing = {
        path.relative_to(SOURCE).as_posix()
        for path in SOURCE.rglob("*.py")
        if IMPORT.search(path.read_text(encoding="utf-8"))
    }
    outside = {name for name in importing if not name.startswith("metadata/")}
    assert outside <= NOT_YET_MOVED, sorted(outside - NOT_YET_MOVED)
    assert any(name.startswith("metadata/") for name in importing)  # the pattern matches
