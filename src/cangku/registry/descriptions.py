"""What a repository is: its short description and Markdown overview (issue 17).

Set by the repository's owners (pages, `/api/v1/repositories/<name>/description`,
`cangku repo describe`). Where unset, they come from the newest tagged image: the OCI
annotations `org.opencontainers.image.description`, `.source`, `.url` and `.licenses`
(OCI image-spec, "Pre-Defined Annotation Keys") of its manifest, else the same keys among
its config's labels (what `docker build --label` and `LABEL` write).
"""

from __future__ import annotations

import json
import time
import unicodedata
from dataclasses import dataclass
from typing import Any

from cangku.content.digest import Digest
from cangku.content.errors import NameUnknown, RegistryError, RequestInvalid
from cangku.content.manifest import parse_manifest
from cangku.content.names import validate_repository_name
from cangku.metadata import Connection, locks
from cangku.metadata import descriptions as rows
from cangku.registry.service import Registry

MAX_DESCRIPTION_CHARACTERS = 100
MAX_OVERVIEW_CHARACTERS = 25_000
# A config blob read for its labels: configs are small; anything larger is skipped.
MAX_CONFIG_BYTES = 1024 * 1024

DESCRIPTION = "org.opencontainers.image.description"
SOURCE = "org.opencontainers.image.source"
URL = "org.opencontainers.image.url"
LICENSES = "org.opencontainers.image.licenses"
IMAGE_KEYS = (DESCRIPTION, SOURCE, URL, LICENSES)


@dataclass(frozen=True, slots=True)
class RepositoryDescription:
    """The texts shown for a repository. `source` says where `description` and `overview`
    came from: "owner" (set), "image" (annotations or labels) or None (nothing known).
    `links` are the image's `.source`/`.url`/`.licenses` values, never markup."""

    repository: str
    description: str | None
    overview: str | None
    source: str | None
    image_source: str | None = None
    image_url: str | None = None
    licenses: str | None = None
    updated_at: float | None = None
    updated_by: str | None = None

    def to_json(self) -> dict[str, object]:
        return {
            "repository": self.repository,
            "description": self.description,
            "overview": self.overview,
            "from": self.source,
            "image": {
                "source": self.image_source,
                "url": self.image_url,
                "licenses": self.licenses,
            },
            "updated_at": self.updated_at,
            "updated_by": self.updated_by,
        }


def clean_description(value: object) -> str | None:
    """A description as sent: one line of at most 100 characters, or None (empty: unset).

    Raises RequestInvalid for anything else (not text, too long, control characters)."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise RequestInvalid("the description must be text")
    value = value.strip()
    if len(value) > MAX_DESCRIPTION_CHARACTERS:
        raise RequestInvalid(
            f"the description is {len(value)} characters long; at most {MAX_DESCRIPTION_CHARACTERS}"
        )
    if any(unicodedata.category(character).startswith("C") for character in value):
        raise RequestInvalid("the description must be one line without control characters")
    return value or None


def clean_overview(value: object) -> str | None:
    """Markdown of at most 25,000 characters (line breaks and tabs allowed), or None."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise RequestInvalid("the overview must be text")
    value = value.replace("\r\n", "\n").strip()
    if len(value) > MAX_OVERVIEW_CHARACTERS:
        raise RequestInvalid(
            f"the overview is {len(value)} characters long; at most {MAX_OVERVIEW_CHARACTERS}"
        )
    if any(
        unicodedata.category(character) == "Cc" and character not in "\n\t" for character in value
    ):
        raise RequestInvalid("the overview must not contain control characters")
    return value or None


async def set_description(
    registry: Registry,
    name: str,
    description: str | None,
    overview: str | None,
    actor: str | None,
) -> RepositoryDescription:
    """Store both texts (already cleaned; None unsets). Raises NameUnknown for a repository
    that does not exist: texts belong to a repository's images, not to a name."""
    validate_repository_name(name)

    def store(connection: Connection) -> None:
        locks.hold(connection, repositories=[name])
        repository_id = rows.repository_id(connection, name)
        if repository_id is None:
            raise NameUnknown("repository name not known to registry", name)
        rows.write_description(connection, repository_id, description, overview, time.time(), actor)

    await registry.metadata.write(store)
    return await describe(registry, name)


async def describe(registry: Registry, name: str) -> RepositoryDescription:
    """The repository's texts: the owners' where set, else the newest image's."""
    validate_repository_name(name)

    def load(connection: Connection) -> tuple[rows.StoredDescription, dict[str, str], str | None]:
        repository_id = rows.repository_id(connection, name)
        if repository_id is None:
            raise NameUnknown("repository name not known to registry", name)
        stored = rows.read_description(connection, repository_id)
        found, config_digest = _from_manifests(connection, repository_id)
        return stored, found, config_digest

    stored, found, config_digest = await registry.metadata.read(load)
    if config_digest is not None and any(key not in found for key in IMAGE_KEYS):
        for key, value in (await _config_labels(registry, name, config_digest)).items():
            found.setdefault(key, value)
    image_description = found.get(DESCRIPTION)
    if image_description is not None:
        image_description = " ".join(image_description.split())[:MAX_DESCRIPTION_CHARACTERS]
    owner_set = stored.description is not None or stored.overview is not None
    return RepositoryDescription(
        repository=name,
        description=stored.description if stored.description is not None else image_description,
        overview=stored.overview,
        source="owner" if owner_set else ("image" if image_description else None),
        image_source=_web_address(found.get(SOURCE)),
        image_url=_web_address(found.get(URL)),
        licenses=found.get(LICENSES),
        updated_at=stored.updated_at,
        updated_by=stored.updated_by,
    )


def _from_manifests(
    connection: Connection, repository_id: int
) -> tuple[dict[str, str], str | None]:
    """The image keys among the newest tagged manifest's annotations (an index's, then its
    first child's), and the config digest whose labels may hold the rest."""
    newest = rows.newest_tagged_manifest(connection, repository_id)
    found: dict[str, str] = {}
    if newest is None:
        return found, None
    digest, media_type, content = newest
    for _ in range(2):  # the index, then its first child manifest
        try:
            parsed = parse_manifest(content, media_type, Digest.parse(digest))
        except RegistryError:
            return found, None
        for key in IMAGE_KEYS:
            value = (parsed.annotations or {}).get(key)
            if isinstance(value, str) and value.strip():
                found.setdefault(key, value.strip())
        if not parsed.is_index:
            return found, str(parsed.config.digest) if parsed.config else None
        if not parsed.manifests:
            return found, None
        digest = str(parsed.manifests[0].digest)
        child = rows.manifest_content(connection, repository_id, digest)
        if child is None:
            return found, None
        media_type, content = child
    return found, None


async def _config_labels(registry: Registry, name: str, config_digest: str) -> dict[str, str]:
    try:
        blobs = registry.repository(name).blobs
        digest, size = await blobs.stat(config_digest)
        if size > MAX_CONFIG_BYTES:
            return {}
        document: Any = json.loads(b"".join([chunk async for chunk in blobs.read(digest, 0, size)]))
    except (RegistryError, OSError, ValueError, RecursionError):
        return {}
    config = document.get("config") if isinstance(document, dict) else None
    labels = config.get("Labels") if isinstance(config, dict) else None
    if not isinstance(labels, dict):
        return {}
    return {
        key: value.strip()
        for key, value in labels.items()
        if key in IMAGE_KEYS and isinstance(value, str) and value.strip()
    }


def _web_address(value: str | None) -> str | None:
    """Only http(s) addresses become links: never `javascript:` or `data:` from an image."""
    if value is None or len(value) > 2000:
        return None
    lowered = value.lower()
    if not lowered.startswith(("https://", "http://")) or any(c.isspace() for c in value):
        return None
    return value
