"""Repository names, tags and references, validated against the OCI distribution grammar."""

from __future__ import annotations

import re

from cangku.content.digest import Digest
from cangku.content.errors import ManifestInvalid, NameInvalid

# OCI dist-spec "Pulling manifests": <name> components separated by "/".
_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
REPOSITORY_NAME = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
TAG = re.compile(r"^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$")
# Docker and the reference registry limit the whole name to 255 characters.
MAX_NAME_LENGTH = 255


def validate_repository_name(name: str) -> str:
    if len(name) > MAX_NAME_LENGTH or not REPOSITORY_NAME.fullmatch(name):
        raise NameInvalid(f"invalid repository name {name[:300]!r}")
    return name


def is_tag(reference: str) -> bool:
    return TAG.fullmatch(reference) is not None


def validate_tag(tag: str) -> str:
    if not is_tag(tag):
        raise ManifestInvalid(f"invalid tag {tag[:200]!r}")
    return tag


def parse_reference(reference: str) -> str | Digest:
    """A manifest reference is a tag or a digest (anything with a ':' is a digest)."""
    if ":" in reference:
        return Digest.parse(reference)
    return validate_tag(reference)


def namespace_of(name: str) -> str:
    return name.split("/", 1)[0]
