"""Repository pages: the list, one repository, one image, deletes and settings."""

from __future__ import annotations

import math
from collections.abc import Mapping
from urllib.parse import quote, urlencode

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from cangku.auth.permissions import DELETE, PUSH
from cangku.content.digest import Digest
from cangku.content.errors import RegistryError
from cangku.content.names import validate_repository_name, validate_tag
from cangku.registry.protocols import BlobService
from cangku.web import descriptions, mirrors
from cangku.web.images import (
    ImageFacts,
    config_view,
    image_facts,
    measure_platforms,
    read_config,
)
from cangku.web.site import Site, Viewer, not_found, page_number

PAGE_SIZE = 25
# The repository page shows this many tags at a time, by name (newest pushes are not
# special), with a link to the next ones: the page costs the same at 10 tags and 10,000.
TAGS_PER_PAGE = 100
# The delete confirmation names this many of a repository's tags.
MAX_TAGS_SHOWN = 500
# The image page and the delete confirmation name this many of the tags on one manifest.
MAX_TAGS_ON_IMAGE = 100


def repository_url(name: str, *rest: str) -> str:
    suffix = "/".join(quote(part, safe=":") for part in rest)
    return f"/r/{quote(name, safe='/')}" + (f"/-/{suffix}" if rest else "")


def pull_host(site: Site, request: Request) -> str:
    if site.access is not None:
        return site.access.base_url(request).split("://", 1)[1]
    return request.headers.get("host", request.url.netloc)


def routes(site: Site) -> list[BaseRoute]:
    registry = site.registry

    def repository_name(request: Request) -> str:
        name: str = request.path_params["name"]
        try:
            validate_repository_name(name)
        except RegistryError:
            raise not_found(f"{name[:200]!r} is not a repository name.") from None
        return name

    def tag_name(request: Request) -> str:
        tag: str = request.path_params["tag"]
        try:
            return validate_tag(tag)
        except RegistryError:
            raise not_found(f"{tag[:200]!r} is not a tag name.") from None

    def digest_of(request: Request) -> str:
        try:
            return str(Digest.parse(request.path_params["digest"]))
        except RegistryError:
            raise not_found("That is not a digest.") from None

    # -- the list --------------------------------------------------------------------------
    async def repository_list(request: Request, viewer: Viewer) -> Response:
        search = request.query_params.get("q", "").strip()[:255]
        sort = request.query_params.get("sort", "name")
        sort = sort if sort in ("name", "pushed") else "name"
        page = page_number(request.query_params.get("page"))
        visibility = await site.visibility(viewer)
        listing = await registry.browse_repositories(
            visibility, search, sort, (page - 1) * PAGE_SIZE, PAGE_SIZE
        )
        pages = max(1, math.ceil(listing.total / PAGE_SIZE))
        if page > pages:  # Past the end (an old link, a hand-made number): the last page.
            page = pages
            listing = await registry.browse_repositories(
                visibility, search, sort, (page - 1) * PAGE_SIZE, PAGE_SIZE
            )

        def page_url(number: int) -> str:
            return "/?" + urlencode({"q": search, "sort": sort, "page": number})

        return site.render(
            request,
            viewer,
            "repositories.html",
            {
                "listing": listing,
                "search": search,
                "sort": sort,
                "page": page,
                "pages": pages,
                "previous_url": page_url(page - 1) if page > 1 else None,
                "next_url": page_url(page + 1) if page < pages else None,
                "host": pull_host(site, request),
                "repository_url": repository_url,
                # Issue 17: descriptions and pulls beside the names.
                **await descriptions.listing_context(
                    site, [summary.name for summary in listing.repositories]
                ),
            },
        )

    # -- one repository --------------------------------------------------------------------
    async def repository_page(request: Request, viewer: Viewer) -> Response:
        name = repository_name(request)
        actions = await site.require_visible(viewer, name)
        after = _tags_after(request)
        # One read for a page of the table (metadata/browse.py), whatever the number of tags.
        table = await registry.tag_table(name, TAGS_PER_PAGE, after)
        # Issue 17: the texts, and the pulls of the repository and of the tags shown.
        about = await descriptions.page_context(site, name, [tag.tag for tag in table.rows])
        rows = []
        # Floating tags share their release's image: read each one once. Images share
        # their config blob (versions of one build): read and parse each config once.
        facts_by_digest: dict[str, tuple[ImageFacts, list[str]]] = {}
        configs: dict[str, list[str]] = {}
        blobs = registry.repository(name).blobs
        for tag in table.rows:
            known = facts_by_digest.get(tag.digest)
            if known is None:
                facts = image_facts(table.manifests[tag.digest])
                measure_platforms(facts, table.manifests)
                known = facts_by_digest[tag.digest] = (
                    facts,
                    await _platforms(blobs, facts, table.blob_sizes, configs),
                )
            facts, platforms = known
            # Issue 17: pulls by this tag (web/descriptions.py reads them).
            tag_pulls = about["pulls"].tags.get(tag.tag)
            rows.append(
                {
                    "tag": tag.tag,
                    "digest": tag.digest,
                    "platforms": platforms,
                    "facts": facts,
                    "pushed_at": tag.pushed_at,
                    "pushed_by": tag.pushed_by or "",
                    "pulls": tag_pulls.pulls if tag_pulls else 0,
                    "last_pulled_at": tag_pulls.last_pulled_at if tag_pulls else None,
                }
            )
        policy = await registry.repository(name).tags.policy()
        host = pull_host(site, request)
        pull = ""
        if rows:
            # The command for `latest` if there is one, else for the first tag by name.
            shown = next((row for row in rows if row["tag"] == "latest"), rows[0])
            facts_shown, _ = facts_by_digest[str(shown["digest"])]
            pull = pull_command(host, name, facts_shown, str(shown["tag"]))
        return site.render(
            request,
            viewer,
            "repository.html",
            {
                "name": name,
                "rows": rows,
                # The next page of tags (by name, after the last one shown), and the first.
                "more_tags_url": (
                    repository_url(name) + "?" + urlencode({"tags_after": table.rows[-1].tag})
                    if table.truncated and table.rows
                    else None
                ),
                "tags_after": after,
                "tree": await registry.repository(name).tags.version_tree(),
                "pull": pull,
                "host": host,
                "public": await site.is_public(name),
                "policy": policy,
                "may_change": DELETE in actions,
                "may_push": PUSH in actions,
                "repository_url": repository_url,
                # Reused for up to browse.USAGE_MAX_AGE seconds: an aggregate over the
                # whole repository (registry/browse.py).
                "usage": (usage := await registry.page_usage(name)).usage,
                "usage_measured_at": usage.measured_at,
                **about,
                **await mirrors.page_context(site, name),  # issue 13
            },
        )

    # -- one image -------------------------------------------------------------------------
    async def image_page(
        request: Request, viewer: Viewer, reference: str, tag: str | None
    ) -> Response:
        name = repository_name(request)
        actions = await site.require_visible(viewer, name)
        manifest = await registry.repository(name).manifests.get(reference)
        facts = image_facts(manifest)
        # An index's children and an image's config, in one read whatever their number.
        parts = await registry.image_parts(
            name,
            [platform.digest for platform in facts.platforms],
            [facts.config.digest] if facts.config is not None else [],
        )
        measure_platforms(facts, parts.manifests)
        config = None
        if not facts.is_index and not facts.is_artifact and facts.problem is None:
            size = parts.blob_sizes.get(facts.config.digest) if facts.config else None
            config = config_view(await read_config(registry.repository(name).blobs, facts, size))
        referrers = await registry.repository(name).referrers.list(manifest.digest, None)
        tags_here = await registry.tags_on(name, manifest.digest, MAX_TAGS_ON_IMAGE + 1)
        host = pull_host(site, request)
        return site.render(
            request,
            viewer,
            "image.html",
            {
                "name": name,
                "tag": tag,
                "facts": facts,
                "config": config,
                "referrers": referrers,
                "tags_here": tags_here[:MAX_TAGS_ON_IMAGE],
                "more_tags_here": len(tags_here) > MAX_TAGS_ON_IMAGE,
                "pull": pull_command(host, name, facts, tag),
                "may_delete": DELETE in actions,
                "repository_url": repository_url,
            },
        )

    async def tag_page(request: Request, viewer: Viewer) -> Response:
        tag = tag_name(request)
        return await image_page(request, viewer, tag, tag)

    async def manifest_page(request: Request, viewer: Viewer) -> Response:
        return await image_page(request, viewer, digest_of(request), None)

    # -- deletes: a confirmation page (GET), then the change (POST) ------------------------
    async def confirm(
        request: Request, viewer: Viewer, what: str, goes: list[str], back: str
    ) -> Response:
        return site.render(
            request,
            viewer,
            "confirm_delete.html",
            {"what": what, "goes": goes, "back": back, "action": request.url.path},
        )

    async def delete_tag(request: Request, viewer: Viewer) -> Response:
        name, tag = repository_name(request), tag_name(request)
        if request.method == "POST":
            await site.checked_form(request, viewer)
            await site.require(viewer, name, DELETE)
            await registry.repository(name).manifests.delete(tag, site.context(request, viewer))
            return site.redirect(request, viewer, repository_url(name))
        await site.require_visible(viewer, name)
        await site.require(viewer, name, DELETE)
        manifest = await registry.repository(name).manifests.get(tag)
        return await confirm(
            request,
            viewer,
            f"the tag {name}:{tag}",
            [
                f"The tag {tag} (it points at {manifest.digest}).",
                "The image itself stays while other tags or its digest reference it.",
            ],
            repository_url(name, "tags", tag),
        )

    async def delete_manifest(request: Request, viewer: Viewer) -> Response:
        name, digest = repository_name(request), digest_of(request)
        if request.method == "POST":
            await site.checked_form(request, viewer)
            await site.require(viewer, name, DELETE)
            await registry.repository(name).manifests.delete(digest, site.context(request, viewer))
            return site.redirect(request, viewer, repository_url(name))
        await site.require_visible(viewer, name)
        await site.require(viewer, name, DELETE)
        await registry.repository(name).manifests.get(digest)
        tags_here = await registry.tags_on(name, digest, MAX_TAGS_ON_IMAGE + 1)
        more = ["Its other tags."] if len(tags_here) > MAX_TAGS_ON_IMAGE else []
        return await confirm(
            request,
            viewer,
            f"the image {name}@{digest}",
            [f"The image {digest}."]
            + [f"Its tag {tag}." for tag in tags_here[:MAX_TAGS_ON_IMAGE]]
            + more
            + ["Its layers, once garbage collection finds nothing else uses them."],
            repository_url(name, "manifests", digest),
        )

    async def delete_repository(request: Request, viewer: Viewer) -> Response:
        name = repository_name(request)
        if request.method == "POST":
            await site.checked_form(request, viewer)
            await site.require(viewer, name, DELETE)
            await registry.delete_repository(name, site.context(request, viewer))
            return site.redirect(request, viewer, "/")
        await site.require_visible(viewer, name)
        await site.require(viewer, name, DELETE)
        page = await registry.repository(name).tags.list(MAX_TAGS_SHOWN, None)
        usage = await registry.repository_usage(name)
        return await confirm(
            request,
            viewer,
            f"the repository {name}",
            [
                f"All {usage.tags} tags"
                + (f": {', '.join(page.items)}" if page.items else "")
                + f", and all {usage.manifests} images.",
                "Unfinished uploads to it.",
                "Its layers, once garbage collection finds nothing else uses them.",
            ],
            repository_url(name),
        )

    # -- release: a client-managed floating tag goes back to the floating-tag policy --------
    async def release_tag(request: Request, viewer: Viewer) -> Response:
        """POST: for those who may push (as the JSON API's release); the tag follows its
        line's newest release again (docs/tags.md, "Mirroring and syncing"). No confirmation
        page: like the settings, it loses nothing and a push makes the tag client-managed
        again."""
        name, tag = repository_name(request), tag_name(request)
        await site.checked_form(request, viewer)
        await site.require(viewer, name, PUSH)
        await registry.repository(name).tags.release(tag, site.context(request, viewer))
        return site.redirect(request, viewer, repository_url(name))

    # -- settings --------------------------------------------------------------------------
    async def settings(request: Request, viewer: Viewer) -> Response:
        name = repository_name(request)
        form = await site.checked_form(request, viewer)
        await site.require(viewer, name, DELETE)
        if site.access is not None:
            await site.access.accounts.set_public(name, form.get("public") == "on")
        await registry.set_tag_policy(
            "repository",
            name,
            floating=form.get("floating") == "on",
            immutable_versions=form.get("immutable_versions") == "on",
        )
        return site.redirect(request, viewer, repository_url(name))

    page = site.page
    return [
        Route("/", page(repository_list), methods=["GET"]),
        Route("/r/{name:path}/-/tags/{tag}/delete", page(delete_tag), methods=["GET", "POST"]),
        Route("/r/{name:path}/-/tags/{tag}/release", page(release_tag), methods=["POST"]),
        Route("/r/{name:path}/-/tags/{tag}", page(tag_page), methods=["GET"]),
        Route(
            "/r/{name:path}/-/manifests/{digest}/delete",
            page(delete_manifest),
            methods=["GET", "POST"],
        ),
        Route("/r/{name:path}/-/manifests/{digest}", page(manifest_page), methods=["GET"]),
        Route("/r/{name:path}/-/delete", page(delete_repository), methods=["GET", "POST"]),
        Route("/r/{name:path}/-/settings", page(settings), methods=["POST"]),
        *descriptions.routes(site, repository_url),  # issue 17
        Route("/r/{name:path}", page(repository_page), methods=["GET"]),
    ]


def pull_command(host: str, name: str, facts: ImageFacts, tag: str | None) -> str:
    """The command that pulls it: docker for images and indexes, ORAS for artifacts (docker
    refuses a manifest whose config is not an image config)."""
    reference = f"{host}/{name}" + (f":{tag}" if tag else f"@{facts.digest}")
    return f"oras pull {reference}" if facts.is_artifact else f"docker pull {reference}"


def _tags_after(request: Request) -> str | None:
    """The `tags_after` query parameter: the tag the table's page starts after (None: from
    the first tag). Anything that is not a tag name is a 404, like a wrong path."""
    after = request.query_params.get("tags_after")
    if after is None or after == "":
        return None
    try:
        return validate_tag(after)
    except RegistryError:
        raise not_found(f"{after[:200]!r} is not a tag name.") from None


async def _platforms(
    blobs: BlobService,
    facts: ImageFacts,
    blob_sizes: Mapping[str, int],
    configs: dict[str, list[str]],
) -> list[str]:
    """What the repository page's Platforms column says about an image, index or artifact;
    `blob_sizes`: the config blobs the repository (`blobs`) holds (`Registry.tag_table`); `configs`:
    the answers for config digests already read for this page (content-addressed: one
    digest, one answer), which this adds to."""
    if facts.problem is not None:
        return ["cannot be parsed"]
    if facts.is_index:
        return [platform.name for platform in facts.platforms]
    if facts.is_artifact:
        return [f"artifact: {facts.artifact_type}"]
    config_digest = facts.config.digest if facts.config is not None else None
    if config_digest is not None and config_digest in configs:
        return configs[config_digest]
    size = blob_sizes.get(config_digest) if config_digest is not None else None
    view = config_view(await read_config(blobs, facts, size))
    answer = [view["platform"] if view["unreadable"] is None else "unknown"]
    if config_digest is not None:
        configs[config_digest] = answer
    return answer
