"""The /v2 routes are tried busiest first (distribution/routes.py); the order must not change
which route a path reaches, repository names that contain route words included."""

from __future__ import annotations

import itertools

from cangku.distribution.routes import ROUTES, routes_for

# The order the routes were written in, most specific first.
SPECIFIC_FIRST = [
    "v2.base",
    "v2.catalog",
    "v2.tags",
    "v2.manifest",
    "v2.upload_start",
    "v2.upload",
    "v2.blob",
    "v2.referrers",
]
WORDS = ["a", "tags", "list", "manifests", "blobs", "uploads", "referrers", "_catalog", "v2"]


def first_match(path: str, names: list[str]) -> str | None:
    patterns = {name: pattern for pattern, name, _ in ROUTES}
    return next((name for name in names if patterns[name].fullmatch(path)), None)


def test_the_busiest_first_order_reaches_the_same_route_for_every_path() -> None:
    in_use = [name for _, name, _ in ROUTES]
    assert in_use[0] == "v2.manifest"
    assert sorted(in_use) == sorted(SPECIFIC_FIRST)
    checked = 0
    for length in range(1, 5):
        for words in itertools.product(WORDS, repeat=length):
            for tail in ("", "/"):
                path = "/v2/" + "/".join(words) + tail
                assert first_match(path, in_use) == first_match(path, SPECIFIC_FIRST), path
                narrowed = [name for _, name, _ in routes_for(path)]
                assert first_match(path, narrowed) == first_match(path, SPECIFIC_FIRST), path
                checked += 1
    assert checked > 10_000


def test_the_base_and_blob_paths_try_only_their_own_routes() -> None:
    # Each route tried is a regular expression over the path: GET /v2/ tried six others first.
    assert [name for _, name, _ in routes_for("/v2/")] == ["v2.base", "v2.catalog"]
    assert [name for _, name, _ in routes_for("/v2/a/b/blobs/sha256:0")] == [
        "v2.upload_start",
        "v2.blob",
    ]
    assert [name for _, name, _ in routes_for("/v2/a/manifests/v1")] == ["v2.manifest"]
