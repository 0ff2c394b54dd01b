"""Facts about an image or artifact for the pages: files, platforms, sizes, its config blob.

Manifests are read with the same parser that accepted them (`content.manifest`); a stored
manifest it refuses is shown as such, with the reason. Image configs are client JSON of any
shape: each field the page shows is read only when it has the type the OCI image spec gives
it, and every other field is named as unreadable instead of breaking the page.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cangku.content import mediatypes
from cangku.content.digest import Digest
from cangku.content.errors import RegistryError
from cangku.content.manifest import Descriptor, parse_manifest
from cangku.registry.protocols import BlobService
from cangku.registry.records import StoredManifest

# A config larger than this is not shown (they are a few KiB; the spec has no limit).
MAX_CONFIG_BYTES = 4 * 1024 * 1024
# Config media types of container images; any other config type makes a manifest an artifact
# (OCI image-spec "Guidelines for Artifact Usage").
IMAGE_CONFIG_MEDIA_TYPES = frozenset(
    {"application/vnd.oci.image.config.v1+json", "application/vnd.docker.container.image.v1+json"}
)
# OCI image-spec annotations: a layer's file name, as `oras push` sets it.
TITLE_ANNOTATION = "org.opencontainers.image.title"
# At most this many unreadable config fields are named on a page.
MAX_PROBLEMS_SHOWN = 20


@dataclass(frozen=True, slots=True)
class Layer:
    """A config or layer descriptor; `title` is the file name an artifact gives it."""

    digest: str
    media_type: str
    size: int  # bytes
    title: str | None = None


@dataclass(frozen=True, slots=True)
class Platform:
    """One child manifest of an index."""

    name: str  # "linux/amd64", "linux/arm64/v8"
    digest: str
    media_type: str
    manifest_size: int  # bytes of the child manifest itself
    # Bytes a pull of this platform downloads (its config and layers); None: unknown (the
    # child is missing, is itself an index, or cannot be parsed).
    pull_size: int | None = None


@dataclass(slots=True)
class ImageFacts:
    digest: str
    media_type: str
    manifest_size: int
    is_index: bool
    # Why the stored manifest cannot be shown (the parser refuses it); None when it can.
    problem: str | None = None
    artifact_type: str | None = None
    config: Layer | None = None
    layers: list[Layer] = field(default_factory=list)
    platforms: list[Platform] = field(default_factory=list)
    annotations: dict[str, str] = field(default_factory=dict)
    subject: str | None = None
    # An index: bytes of every platform's manifest, config and layers, each blob once.
    stored_size: int | None = None

    @property
    def is_artifact(self) -> bool:
        """An OCI artifact: a manifest whose config is not an image config (`artifactType`,
        an empty config, a Helm chart...). Docker cannot pull it; ORAS can."""
        return (
            not self.is_index
            and self.problem is None
            and self.artifact_type not in IMAGE_CONFIG_MEDIA_TYPES
        )

    @property
    def pull_size(self) -> int | None:
        """Bytes one pull downloads: an image's config and layers. None for an index: each
        platform pulls its own (`Platform.pull_size`)."""
        if self.is_index or self.problem is not None:
            return None
        return sum(layer.size for layer in self.layers) + (self.config.size if self.config else 0)

    @property
    def platform_pull_sizes(self) -> tuple[int, int] | None:
        """The smallest and largest known platform pull of an index."""
        sizes = [p.pull_size for p in self.platforms if p.pull_size is not None]
        return (min(sizes), max(sizes)) if sizes else None


def _layer(descriptor: Descriptor) -> Layer:
    title = (descriptor.annotations or {}).get(TITLE_ANNOTATION)
    return Layer(str(descriptor.digest), descriptor.media_type, descriptor.size, title or None)


def platform_name(platform: Any) -> str:
    """`os/architecture[/variant]` from an OCI platform object; "unknown" without one."""
    if not isinstance(platform, dict):
        return "unknown"
    parts = [platform.get("os"), platform.get("architecture"), platform.get("variant")]
    return "/".join(part for part in parts if isinstance(part, str) and part) or "unknown"


def image_facts(manifest: StoredManifest) -> ImageFacts:
    """What the stored manifest says, parsed as it was when pushed (OCI image-spec)."""
    facts = ImageFacts(
        digest=manifest.digest,
        media_type=manifest.media_type,
        manifest_size=manifest.size,
        is_index=manifest.media_type in mediatypes.INDEXES,
    )
    try:
        parsed = parse_manifest(
            manifest.content, manifest.media_type, Digest.parse(manifest.digest)
        )
    except RegistryError as error:
        # Accepted under older rules, perhaps: say why rather than guess.
        facts.problem = error.message
        return facts
    facts.annotations = dict(parsed.annotations or {})
    facts.subject = str(parsed.subject.digest) if parsed.subject else None
    facts.artifact_type = parsed.artifact_type
    if parsed.is_index:
        facts.platforms = [
            Platform(
                platform_name(child.platform),
                str(child.digest),
                child.media_type,
                child.size,
            )
            for child in parsed.manifests
        ]
    else:
        facts.config = _layer(parsed.config) if parsed.config else None
        facts.layers = [_layer(layer) for layer in parsed.layers]
    return facts


def measure_platforms(facts: ImageFacts, manifests: Mapping[str, StoredManifest]) -> None:
    """Fill in each platform's pull size and the index's stored size from its children in
    `manifests` (by digest; a missing child leaves its pull size unknown).

    An index's own descriptors give only the size of each child *manifest* (about a KiB);
    what a platform pulls is that child's config and layers.
    """
    if not facts.is_index:
        return
    measured = []
    blobs: dict[str, int] = {}
    for platform in facts.platforms:
        pull_size = None
        stored = manifests.get(platform.digest)
        child = image_facts(stored) if stored is not None else None
        if child is not None and child.pull_size is not None:
            pull_size = child.pull_size
            blobs[child.digest] = child.manifest_size
            for blob in [child.config, *child.layers]:
                if blob is not None:
                    blobs[blob.digest] = blob.size
        measured.append(
            Platform(
                platform.name,
                platform.digest,
                platform.media_type,
                platform.manifest_size,
                pull_size,
            )
        )
    facts.platforms = measured
    facts.stored_size = facts.manifest_size + sum(blobs.values())


@dataclass(frozen=True, slots=True)
class ConfigBlob:
    """An image config as read from storage: the JSON document, or why there is none."""

    document: Any = None
    problem: str | None = None


async def read_config(blobs: BlobService, facts: ImageFacts, size: int | None) -> ConfigBlob:
    """The image's config blob, which the repository (`blobs`) holds with `size` bytes
    (None: it does not hold it), parsed as JSON (at most 4 MiB), or the reason it cannot be."""
    if facts.config is None:
        return ConfigBlob(problem="the manifest names no config blob.")
    if facts.config.size > MAX_CONFIG_BYTES:
        return ConfigBlob(problem="it is larger than 4 MiB.")
    if size is None:
        return ConfigBlob(problem="it is missing from storage.")
    if size > MAX_CONFIG_BYTES:
        return ConfigBlob(problem="it is larger than 4 MiB.")
    try:
        digest = Digest.parse(facts.config.digest)
        chunks = [chunk async for chunk in blobs.read(digest, 0, size)]
    except (RegistryError, OSError):
        return ConfigBlob(problem="it is missing from storage.")
    try:
        return ConfigBlob(document=json.loads(b"".join(chunks)))
    except RecursionError:
        return ConfigBlob(problem="its JSON is nested too deeply.")
    except ValueError:  # UnicodeDecodeError is one
        return ConfigBlob(problem="it is not JSON.")


class _Reader:
    """Reads fields of client JSON by their spec type, noting each one that has another."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def note(self, where: str, expected: str) -> None:
        self.problems.append(f"{where}: not {expected}")

    def object(self, document: dict[str, Any], key: str, where: str) -> dict[str, Any]:
        value = document.get(key)
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.note(where, "an object")
            return {}
        return value

    def string(self, document: dict[str, Any], key: str, where: str) -> str:
        value = document.get(key)
        if value is None:
            return ""
        if not isinstance(value, str):
            self.note(where, "a string")
            return ""
        return value

    def strings(self, document: dict[str, Any], key: str, where: str) -> list[str]:
        value = document.get(key)
        if value is None:
            return []
        if isinstance(value, str):  # Some builders write Cmd as one string.
            return [value]
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            self.note(where, "a list of strings")
            return []
        return value

    def string_map(self, document: dict[str, Any], key: str, where: str) -> dict[str, str]:
        value = self.object(document, key, where)
        shown = {k: v for k, v in value.items() if isinstance(v, str)}
        if len(shown) != len(value):
            self.note(where, "a map of strings")
        return shown


def config_view(blob: ConfigBlob) -> dict[str, Any]:
    """The parts of an image config the page shows (OCI image-spec config.md), each a string
    or a list of strings, and `problems`: the fields that have another type, as
    "history: not a list". `unreadable` says why the blob itself cannot be shown."""
    if blob.problem is not None:
        return {"unreadable": blob.problem}
    if not isinstance(blob.document, dict):
        return {"unreadable": "it is not a JSON object."}
    document: dict[str, Any] = blob.document
    read = _Reader()
    config = read.object(document, "config", "config")
    history: list[dict[str, Any]] = []
    entries = document.get("history")
    if entries is not None and not isinstance(entries, list):
        read.note("history", "a list")
        entries = None
    for index, entry in enumerate(entries or []):
        where = f"history[{index}]"
        if not isinstance(entry, dict):
            read.note(where, "an object")
            continue
        empty_layer = entry.get("empty_layer", False)
        if not isinstance(empty_layer, bool):
            read.note(f"{where}.empty_layer", "true or false")
            empty_layer = False
        history.append(
            {
                "created": read.string(entry, "created", f"{where}.created"),
                "created_by": read.string(entry, "created_by", f"{where}.created_by"),
                "comment": read.string(entry, "comment", f"{where}.comment"),
                "empty_layer": empty_layer,
            }
        )
    platform = {key: read.string(document, key, key) for key in ("os", "architecture", "variant")}
    view = {
        "unreadable": None,
        "platform": platform_name(platform),
        "created": read.string(document, "created", "created"),
        "author": read.string(document, "author", "author"),
        "entrypoint": read.strings(config, "Entrypoint", "config.Entrypoint"),
        "cmd": read.strings(config, "Cmd", "config.Cmd"),
        "env": read.strings(config, "Env", "config.Env"),
        "working_dir": read.string(config, "WorkingDir", "config.WorkingDir"),
        "user": read.string(config, "User", "config.User"),
        "labels": read.string_map(config, "Labels", "config.Labels"),
        "exposed_ports": sorted(read.object(config, "ExposedPorts", "config.ExposedPorts")),
        "history": history,
    }
    problems = read.problems
    if len(problems) > MAX_PROBLEMS_SHOWN:
        more = len(problems) - MAX_PROBLEMS_SHOWN
        problems = [*problems[:MAX_PROBLEMS_SHOWN], f"and {more} more"]
    view["problems"] = problems
    return view
