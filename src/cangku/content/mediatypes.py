"""Manifest media types the registry accepts, and how clients ask for them."""

from __future__ import annotations

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"

IMAGE_MANIFESTS = frozenset({DOCKER_MANIFEST, OCI_MANIFEST})
INDEXES = frozenset({DOCKER_MANIFEST_LIST, OCI_INDEX})
MANIFEST_MEDIA_TYPES = IMAGE_MANIFESTS | INDEXES
DOCKER_TYPES = frozenset({DOCKER_MANIFEST, DOCKER_MANIFEST_LIST})

# Layers that registries never hold (Windows base layers are fetched from their URLs).
NON_DISTRIBUTABLE_LAYERS = frozenset(
    {
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
        "application/vnd.oci.image.layer.nondistributable.v1.tar",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
    }
)


def parse_accept(header: str | None) -> list[str]:
    """Media types from Accept header values joined by commas, parameters dropped."""
    if not header:
        return []
    types = []
    for part in header.split(","):
        media_type = part.split(";", 1)[0].strip().lower()
        if media_type:
            types.append(media_type)
    return types


def is_acceptable(stored_media_type: str, accepted: list[str]) -> bool:
    """Whether a client that sent `accepted` can take a manifest of `stored_media_type`.

    Like the reference registry: no Accept (or a wildcard) takes anything, and a client that
    names manifest types but not this one cannot use it.
    """
    if not accepted or stored_media_type in accepted:
        return True
    if any(t in ("*/*", "application/*") for t in accepted):
        return True
    return not any(t in MANIFEST_MEDIA_TYPES for t in accepted)
