"""Plain results the use cases hand back to the HTTP layers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class StoredManifest:
    digest: str
    media_type: str
    size: int
    content: bytes


@dataclass(frozen=True, slots=True)
class PushedManifest:
    digest: str
    subject: str | None
    tags: list[str]


@dataclass(frozen=True, slots=True)
class Page:
    items: list[str]
    # The last item returned when more remain: the `last=` of the next page.
    next_last: str | None


@dataclass(frozen=True, slots=True)
class Referrer:
    media_type: str
    digest: str
    size: int
    artifact_type: str | None
    annotations: dict[str, Any] | None

    def descriptor(self) -> dict[str, Any]:
        descriptor: dict[str, Any] = {
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": self.size,
        }
        if self.artifact_type:
            descriptor["artifactType"] = self.artifact_type
        if self.annotations:
            descriptor["annotations"] = self.annotations
        return descriptor
