"""Parse and validate manifests and indexes, and say what they reference.

The bytes are stored exactly as pushed; parsing only decides whether they are acceptable and
which blobs, child manifests and subject they point at.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from cangku.content import mediatypes
from cangku.content.digest import Digest
from cangku.content.errors import ManifestInvalid, RegistryError

MAX_MANIFEST_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Descriptor:
    media_type: str
    digest: Digest
    size: int
    artifact_type: str | None = None
    annotations: dict[str, str] | None = None
    platform: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Manifest:
    media_type: str
    digest: Digest
    size: int
    # Blobs this manifest needs in the repository: its config and layers.
    blobs: list[Descriptor] = field(default_factory=list)
    # Child manifests of an index.
    manifests: list[Descriptor] = field(default_factory=list)
    subject: Descriptor | None = None
    # OCI 1.1: artifactType, or the config media type for a manifest that has none.
    artifact_type: str | None = None
    annotations: dict[str, str] | None = None
    # An image manifest's config and every layer in order, non-distributable ones included.
    config: Descriptor | None = None
    layers: list[Descriptor] = field(default_factory=list)

    @property
    def is_index(self) -> bool:
        return self.media_type in mediatypes.INDEXES


def parse_manifest(raw: bytes, content_type: str | None, digest: Digest) -> Manifest:
    """Validate a pushed manifest. `content_type` is the request's Content-Type, if any."""
    if len(raw) > MAX_MANIFEST_BYTES:
        raise ManifestInvalid("manifest is larger than 4 MiB")
    try:
        document = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as error:
        raise ManifestInvalid(f"manifest is not valid JSON: {error}") from None
    except RecursionError:
        raise ManifestInvalid("manifest JSON is nested too deeply") from None
    if not isinstance(document, dict):
        raise ManifestInvalid("manifest must be a JSON object")

    media_type = _media_type(document, content_type)
    schema_version = document.get("schemaVersion")
    if type(schema_version) is not int or schema_version != 2:
        raise ManifestInvalid("schemaVersion must be 2")

    subject = None
    if document.get("subject") is not None:
        subject = _descriptor(document["subject"], "subject")
    annotations = _annotations(document.get("annotations"), "annotations")

    if media_type in mediatypes.INDEXES:
        children = document.get("manifests")
        if not isinstance(children, list):
            raise ManifestInvalid("an index needs a 'manifests' array")
        manifests = [_descriptor(child, f"manifests[{i}]") for i, child in enumerate(children)]
        artifact_type = _optional_string(document, "artifactType")
        return Manifest(
            media_type=media_type,
            digest=digest,
            size=len(raw),
            manifests=manifests,
            subject=subject,
            artifact_type=artifact_type,
            annotations=annotations,
        )

    config = _descriptor(document.get("config"), "config")
    layers_field = document.get("layers")
    if not isinstance(layers_field, list):
        raise ManifestInvalid("an image manifest needs a 'layers' array")
    layers = [_descriptor(layer, f"layers[{i}]") for i, layer in enumerate(layers_field)]
    needed = [config] + [
        layer for layer in layers if layer.media_type not in mediatypes.NON_DISTRIBUTABLE_LAYERS
    ]
    artifact_type = _optional_string(document, "artifactType") or config.media_type
    return Manifest(
        media_type=media_type,
        digest=digest,
        size=len(raw),
        blobs=needed,
        subject=subject,
        artifact_type=artifact_type,
        annotations=annotations,
        config=config,
        layers=layers,
    )


def _media_type(document: dict[str, Any], content_type: str | None) -> str:
    """The one media type a pushed document has, refusing any contradiction (MANIFEST_INVALID).

    The rule (docs/api.md, "Manifests"): the body's `mediaType` and a specific Content-Type
    must agree; the document's shape must fit the type (an index has `manifests` and no
    `config`/`layers`, an image manifest the reverse: image-spec v1.0.2, CVE-2021-41190);
    a Docker type needs its `mediaType` in the body (Docker schema 2 requires it, as
    Distribution checks), so the same bytes can never be both an OCI and a Docker manifest;
    without any type, only an unambiguous OCI shape is accepted.
    """
    declared = document.get("mediaType")
    if declared is not None and not isinstance(declared, str):
        raise ManifestInvalid("mediaType must be a string")
    header = (content_type or "").split(";", 1)[0].strip().lower()
    index_shape = "manifests" in document
    image_shape = "config" in document or "layers" in document
    if header in mediatypes.MANIFEST_MEDIA_TYPES:
        if declared is not None and declared != header:
            raise ManifestInvalid(
                f"mediaType {declared!r} in the manifest does not match Content-Type {header!r}"
            )
        media_type = header
    elif header not in ("", "application/json", "application/octet-stream"):
        # OCI dist-spec 1.0.1 (CVE-2021-41190): a specific type must agree with the body.
        raise ManifestInvalid(f"unsupported manifest media type {header[:100]!r}")
    elif declared in mediatypes.MANIFEST_MEDIA_TYPES:
        media_type = declared
    elif declared is not None:
        raise ManifestInvalid(f"unsupported manifest media type {declared[:100]!r}")
    elif index_shape and image_shape:
        raise ManifestInvalid(
            "ambiguous manifest: it has both 'manifests' and 'config'/'layers' and no mediaType"
        )
    elif index_shape:
        media_type = mediatypes.OCI_INDEX  # No type anywhere: OCI, recognisable by its shape.
    elif image_shape:
        media_type = mediatypes.OCI_MANIFEST
    else:
        raise ManifestInvalid("cannot tell the manifest's media type")
    if media_type in mediatypes.INDEXES and image_shape:
        raise ManifestInvalid(f"a {media_type} must not have 'config' or 'layers'")
    if media_type in mediatypes.IMAGE_MANIFESTS and index_shape:
        raise ManifestInvalid(f"a {media_type} must not have 'manifests'")
    if media_type in mediatypes.DOCKER_TYPES and declared is None:
        raise ManifestInvalid(f"a {media_type} must name its mediaType in the body")
    return media_type


def _descriptor(value: Any, where: str) -> Descriptor:
    if not isinstance(value, dict):
        raise ManifestInvalid(f"{where} must be a descriptor object")
    media_type = value.get("mediaType")
    if not isinstance(media_type, str) or not media_type:
        raise ManifestInvalid(f"{where}.mediaType must be a non-empty string")
    size = value.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ManifestInvalid(f"{where}.size must be a non-negative integer")
    digest_value = value.get("digest")
    if not isinstance(digest_value, str):
        raise ManifestInvalid(f"{where}.digest must be a string")
    try:
        digest = Digest.parse(digest_value)
    except RegistryError as error:
        raise ManifestInvalid(f"{where}.digest: {error.message}") from None
    platform = value.get("platform")
    if platform is not None and not isinstance(platform, dict):
        raise ManifestInvalid(f"{where}.platform must be an object")
    return Descriptor(
        media_type=media_type,
        digest=digest,
        size=size,
        artifact_type=_optional_string(value, "artifactType"),
        annotations=_annotations(value.get("annotations"), f"{where}.annotations"),
        platform=platform,
    )


def _optional_string(document: dict[str, Any], key: str) -> str | None:
    value = document.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ManifestInvalid(f"{key} must be a string")
    return value


def _annotations(value: Any, where: str) -> dict[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ManifestInvalid(f"{where} must map strings to strings")
    return value
