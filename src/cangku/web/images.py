"""Facts about an image for the pages: layers, platforms, sizes, and its config blob.

Read through the registry (manifests from metadata, the config blob from storage); nothing
here trusts the shape of what a client pushed: anything unexpected is shown as absent.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from cangku.content import mediatypes
from cangku.content.errors import RegistryError
from cangku.registry import Registry
from cangku.registry.records import StoredManifest

# A config larger than this is not shown (they are a few KiB; the spec has no limit).
MAX_CONFIG_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Layer:
    digest: str
    media_type: str
    size: int


@dataclass(frozen=True, slots=True)
class Platform:
    name: str  # "linux/amd64", "linux/arm64/v8"
    digest: str
    size: int
    media_type: str


@dataclass(slots=True)
class ImageFacts:
    digest: str
    media_type: str
    manifest_size: int
    is_index: bool
    artifact_type: str | None = None
    config: Layer | None = None
    layers: list[Layer] = field(default_factory=list)
    platforms: list[Platform] = field(default_factory=list)
    annotations: dict[str, str] = field(default_factory=dict)
    subject: str | None = None

    @property
    def compressed_size(self) -> int:
        """What a pull downloads: config and layers (an index: its children's manifests)."""
        if self.is_index:
            return sum(platform.size for platform in self.platforms)
        return sum(layer.size for layer in self.layers) + (self.config.size if self.config else 0)


def _descriptor(value: Any) -> Layer | None:
    if not isinstance(value, dict):
        return None
    digest, media_type, size = value.get("digest"), value.get("mediaType"), value.get("size")
    if not isinstance(digest, str) or not isinstance(size, int):
        return None
    return Layer(digest, media_type if isinstance(media_type, str) else "", size)


def platform_name(platform: Any) -> str:
    if not isinstance(platform, dict):
        return "unknown"
    parts = [platform.get("os"), platform.get("architecture"), platform.get("variant")]
    return "/".join(str(part) for part in parts if isinstance(part, str) and part) or "unknown"


def image_facts(manifest: StoredManifest) -> ImageFacts:
    try:
        document = json.loads(manifest.content)
    except ValueError:
        document = {}
    if not isinstance(document, dict):
        document = {}
    is_index = manifest.media_type in mediatypes.INDEXES
    facts = ImageFacts(
        digest=manifest.digest,
        media_type=manifest.media_type,
        manifest_size=manifest.size,
        is_index=is_index,
    )
    annotations = document.get("annotations")
    if isinstance(annotations, dict):
        facts.annotations = {str(k): str(v) for k, v in annotations.items()}
    subject = _descriptor(document.get("subject"))
    facts.subject = subject.digest if subject else None
    artifact_type = document.get("artifactType")
    if is_index:
        for child in document.get("manifests") or []:
            descriptor = _descriptor(child)
            if descriptor is not None:
                facts.platforms.append(
                    Platform(
                        platform_name(child.get("platform")),
                        descriptor.digest,
                        descriptor.size,
                        descriptor.media_type,
                    )
                )
    else:
        facts.config = _descriptor(document.get("config"))
        for value in document.get("layers") or []:
            layer = _descriptor(value)
            if layer is not None:
                facts.layers.append(layer)
        if not isinstance(artifact_type, str) and facts.config is not None:
            artifact_type = facts.config.media_type
    facts.artifact_type = artifact_type if isinstance(artifact_type, str) else None
    return facts


async def read_config(registry: Registry, repository: str, facts: ImageFacts) -> dict[str, Any]:
    """The image's config JSON (empty when it is missing, too large or not JSON)."""
    if facts.config is None or facts.config.size > MAX_CONFIG_BYTES:
        return {}
    try:
        digest, size = await registry.stat_blob(repository, facts.config.digest)
        if size > MAX_CONFIG_BYTES:
            return {}
        chunks = [chunk async for chunk in registry.read_blob(digest, 0, size)]
        document = json.loads(b"".join(chunks))
    except (RegistryError, ValueError, OSError):
        return {}
    return document if isinstance(document, dict) else {}


def config_view(document: dict[str, Any]) -> dict[str, Any]:
    """The parts of an image config the page shows, each a plain string or list of strings."""
    config = document.get("config")
    if not isinstance(config, dict):
        config = {}

    def strings(value: Any) -> list[str]:
        if isinstance(value, list):
            return [str(item) for item in value]
        return [str(value)] if isinstance(value, str) else []

    labels = config.get("Labels")
    history = []
    for entry in document.get("history") or []:
        if isinstance(entry, dict):
            history.append(
                {
                    "created": str(entry.get("created", "")),
                    "created_by": str(entry.get("created_by", "")),
                    "comment": str(entry.get("comment", "")),
                    "empty_layer": bool(entry.get("empty_layer", False)),
                }
            )
    ports = config.get("ExposedPorts")
    return {
        "platform": platform_name(document),
        "created": str(document.get("created", "")),
        "author": str(document.get("author", "")),
        "entrypoint": strings(config.get("Entrypoint")),
        "cmd": strings(config.get("Cmd")),
        "env": strings(config.get("Env")),
        "working_dir": str(config.get("WorkingDir") or ""),
        "user": str(config.get("User") or ""),
        "labels": {str(k): str(v) for k, v in labels.items()} if isinstance(labels, dict) else {},
        "exposed_ports": sorted(str(port) for port in ports) if isinstance(ports, dict) else [],
        "history": history,
    }
