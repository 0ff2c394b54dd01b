"""Plain results the use cases hand back to the HTTP layers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cangku.content.versions import LATEST, parse_version

if TYPE_CHECKING:
    from cangku.registry.tags import TagPolicy


@dataclass(frozen=True, slots=True)
class StoredManifest:
    digest: str
    media_type: str
    size: int
    content: bytes
    # For the client, one Warning header each (e.g. served stale from the pull-through cache).
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class PushedManifest:
    digest: str
    subject: str | None
    tags: list[str]
    # For the client, one Warning header each (e.g. a floating tag became client-managed).
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Page:
    items: list[str]
    # The last item returned when more remain: the `last=` of the next page.
    next_last: str | None


@dataclass(frozen=True, slots=True)
class Visibility:
    """Which repositories a caller may list: those in `namespaces` and the public ones."""

    namespaces: frozenset[str]
    public_by_default: bool
    # Upstreams whose mirrors (`<upstream>/…`, without a visibility of their own) are listed
    # too: the public ones, and for a signed-in user all (docs/proxy.md, "Access").
    mirrors: frozenset[str] = frozenset()
    # Upstreams whose mirrors (without a visibility of their own) the caller may not list.
    hidden_mirrors: frozenset[str] = frozenset()


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


@dataclass(frozen=True, slots=True)
class ReferrersPage:
    """Referrers in digest order whose descriptors, serialized as `json.dumps` does and joined
    by ", ", take at most the page's byte budget."""

    referrers: list[Referrer]
    # The last digest listed when more remain: the `last=` of the next page.
    next_last: str | None
    # Referrers listed without their annotations, which alone exceed the budget.
    trimmed: list[str]


@dataclass(frozen=True, slots=True)
class TagChange:
    id: int  # increases with every change; `before=` of the history's next page
    tag: str
    old_digest: str | None
    new_digest: str | None
    changed_at: float
    actor: str | None
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "tag": self.tag,
            "old_digest": self.old_digest,
            "new_digest": self.new_digest,
            "changed_at": self.changed_at,
            "actor": self.actor,
            "reason": self.reason,
        }


@dataclass(frozen=True, slots=True)
class VersionTree:
    """A page of a repository's versions, highest first, as major → minor → patch, with the
    floating tags on them. `next_last` is the `last=` of the next page, None on the last."""

    repository: str
    policy: dict[str, bool]
    latest: dict[str, Any] | None
    majors: list[dict[str, Any]]
    next_last: str | None

    @classmethod
    def build(
        cls,
        repository: str,
        versions: list[tuple[str, str]],
        floating: dict[str, dict[str, str | bool | None]],
        policy: TagPolicy,
        next_last: str | None,
    ) -> VersionTree:
        """`versions`: (tag, digest), highest first; `floating`: the floating tags of their
        lines that exist, tag → {tag, digest, follows, client_managed}."""

        def digest_of(tag: str) -> object:
            state = floating.get(tag)
            return None if state is None else state["digest"]

        majors: dict[tuple[str, int], dict[str, Any]] = {}
        for tag, digest in versions:
            version = parse_version(tag)
            if version is None:
                continue
            major_tag = f"{version.prefix}{version.major}"
            minor_tag = f"{major_tag}.{version.minor}"
            major = majors.setdefault(
                (version.prefix, version.major),
                {"major": major_tag, "floating": floating.get(major_tag), "minors": {}},
            )
            minor = major["minors"].setdefault(
                minor_tag,
                {"minor": minor_tag, "floating": floating.get(minor_tag), "versions": []},
            )
            minor["versions"].append(
                {
                    "tag": tag,
                    "digest": digest,
                    "prerelease": not version.is_release,
                    "floating_tags": [
                        line for line in version.floating_tags() if digest_of(line) == digest
                    ]
                    if version.is_release
                    else [],
                }
            )
        tree = [{**major, "minors": list(major["minors"].values())} for major in majors.values()]
        return cls(
            repository=repository,
            policy={
                "floating": policy.floating,
                "immutable_versions": policy.immutable_versions,
            },
            latest=floating.get(LATEST),
            majors=tree,
            next_last=next_last,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "repository": self.repository,
            "policy": self.policy,
            "latest": self.latest,
            "majors": self.majors,
            "next_last": self.next_last,
        }
