"""Semantic-version tags and the floating tags that follow them.

A version tag is `MAJOR.MINOR.PATCH` with an optional `v` prefix, an optional pre-release
(`1.9.3-rc.1`) and optional build metadata written `_build5` (`+` is not legal in a tag).
Ordering is SemVer 2.0; build metadata is ignored for ordering.

Each release (a version without pre-release) is followed by three floating tags, spelled with
the version's own prefix: `MAJOR.MINOR`, `MAJOR`, and `latest` (shared by both spellings).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import total_ordering

_NUMBER = r"0|[1-9]\d*"
_IDENTIFIER = r"[0-9A-Za-z-]+"
VERSION_TAG = re.compile(
    rf"(?P<prefix>v?)(?P<major>{_NUMBER})\.(?P<minor>{_NUMBER})\.(?P<patch>{_NUMBER})"
    rf"(?:-(?P<prerelease>{_IDENTIFIER}(?:\.{_IDENTIFIER})*))?"
    rf"(?:_(?P<build>{_IDENTIFIER}(?:\.{_IDENTIFIER})*))?"
)
FLOATING_TAG = re.compile(rf"(?P<prefix>v?)(?P<major>{_NUMBER})(?:\.(?P<minor>{_NUMBER}))?|latest")
LATEST = "latest"


@total_ordering
@dataclass(frozen=True, slots=True)
class Version:
    tag: str
    prefix: str
    major: int
    minor: int
    patch: int
    prerelease: tuple[str, ...] = ()
    build: str | None = None

    @property
    def is_release(self) -> bool:
        return not self.prerelease

    def floating_tags(self) -> tuple[str, str, str]:
        """The floating tags of this version's lines, narrowest first."""
        return (
            f"{self.prefix}{self.major}.{self.minor}",
            f"{self.prefix}{self.major}",
            LATEST,
        )

    def precedence_key(self) -> bytes:
        """This version's SemVer 2.0 §11 precedence as bytes that compare (bytewise, as SQLite
        BLOBs and PostgreSQL bytea do) exactly as the versions do; build metadata is ignored.

        Each number is its digit count (one byte: a tag has at most 128 characters) then its
        digits; a release ends with 0x02, a pre-release with 0x01 then its identifiers, each
        0x01 + number or 0x02 + text + 0x00, so numeric identifiers rank below alphanumeric
        ones and a longer list wins a tie (its shorter rival is a prefix of it). The key of a
        release line (`line_key`) is a prefix of the keys of all its versions.
        """
        key = line_key(self.major, self.minor) + _number_key(self.patch)
        if not self.prerelease:
            return key + b"\x02"
        key += b"\x01"
        for part in self.prerelease:
            if part.isdigit():
                key += b"\x01" + _number_key(int(part))
            else:
                key += b"\x02" + part.encode("ascii") + b"\x00"
        return key

    def _key(self) -> tuple[int, int, int, int, tuple[tuple[int, int, str], ...]]:
        # SemVer 2.0 §11: a release outranks its pre-releases; numeric identifiers compare
        # numerically and below alphanumeric ones; a longer identifier list wins a tie.
        identifiers = tuple(
            (0, int(part), "") if part.isdigit() else (1, 0, part) for part in self.prerelease
        )
        return (self.major, self.minor, self.patch, 0 if self.prerelease else 1, identifiers)

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Version):
            return NotImplemented
        return self._key() < other._key()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Version):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())


def parse_version(tag: str) -> Version | None:
    """The version a tag names, or None for tags that are not versions."""
    match = VERSION_TAG.fullmatch(tag)
    if match is None:
        return None
    prerelease = tuple(match["prerelease"].split(".")) if match["prerelease"] else ()
    # SemVer: numeric pre-release identifiers have no leading zeros.
    if any(part.isdigit() and part != "0" and part.startswith("0") for part in prerelease):
        return None
    return Version(
        tag=tag,
        prefix=match["prefix"],
        major=int(match["major"]),
        minor=int(match["minor"]),
        patch=int(match["patch"]),
        prerelease=prerelease,
        build=match["build"],
    )


def _number_key(number: int) -> bytes:
    digits = str(number).encode("ascii")
    return bytes([len(digits)]) + digits


def line_key(major: int, minor: int | None = None) -> bytes:
    """The common start of the precedence keys of line `major` (or `major.minor`)."""
    key = _number_key(major)
    return key if minor is None else key + _number_key(minor)


@dataclass(frozen=True, slots=True)
class Line:
    """The releases a floating tag follows: those with `prefix` (None: either spelling) whose
    precedence key lies in [low, high)."""

    prefix: str | None
    low: bytes
    high: bytes


# Every precedence key starts with a digit count (1..128), so this range holds them all.
ALL_KEYS = (b"\x01", b"\xff")
# The byte after a line's key is a digit count (at most 128): key + LINE_END bounds the line.
LINE_END = b"\xff"


def line_of(floating_tag: str) -> Line | None:
    """The line a floating tag follows, or None for tags that are not floating tags."""
    if floating_tag == LATEST:
        return Line(None, *ALL_KEYS)
    match = FLOATING_TAG.fullmatch(floating_tag)
    if match is None:
        return None
    minor = None if match["minor"] is None else int(match["minor"])
    low = line_key(int(match["major"]), minor)
    return Line(match["prefix"], low, low + LINE_END)


def is_floating_tag(tag: str) -> bool:
    return FLOATING_TAG.fullmatch(tag) is not None


def in_line(version: Version, floating_tag: str) -> bool:
    """Whether `version` belongs to the line that `floating_tag` follows."""
    if floating_tag == LATEST:
        return True
    match = FLOATING_TAG.fullmatch(floating_tag)
    if match is None or match["prefix"] != version.prefix or int(match["major"]) != version.major:
        return False
    return match["minor"] is None or int(match["minor"]) == version.minor


def highest_release(versions: list[Version], floating_tag: str) -> Version | None:
    """The highest release of a line; among equals (build metadata) the last in the list."""
    best: Version | None = None
    for version in versions:
        if (
            version.is_release
            and in_line(version, floating_tag)
            and (best is None or version >= best)
        ):
            best = version
    return best
