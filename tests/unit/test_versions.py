"""Semantic-version tags: parsing, SemVer 2.0 ordering, lines and floating tags."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cangku.content.versions import (
    Version,
    highest_release,
    in_line,
    is_floating_tag,
    line_of,
    parse_version,
)


def v(tag: str) -> Version:
    version = parse_version(tag)
    assert version is not None, tag
    return version


@pytest.mark.parametrize(
    ("tag", "prefix", "numbers", "prerelease", "build"),
    [
        ("1.9.2", "", (1, 9, 2), (), None),
        ("v1.9.2", "v", (1, 9, 2), (), None),
        ("1.9.3-rc.1", "", (1, 9, 3), ("rc", "1"), None),
        ("0.0.0", "", (0, 0, 0), (), None),
        ("1.9.2_build5", "", (1, 9, 2), (), "build5"),
        (
            "v10.20.30-alpha-1.beta_exp.sha-5114f85",
            "v",
            (10, 20, 30),
            ("alpha-1", "beta"),
            "exp.sha-5114f85",
        ),
    ],
)
def test_version_tags_parse(
    tag: str,
    prefix: str,
    numbers: tuple[int, int, int],
    prerelease: tuple[str, ...],
    build: str | None,
) -> None:
    version = v(tag)
    assert (version.prefix, (version.major, version.minor, version.patch)) == (prefix, numbers)
    assert (version.prerelease, version.build) == (prerelease, build)


@pytest.mark.parametrize(
    "tag",
    [
        "1.9",
        "1",
        "latest",
        "01.9.2",
        "1.09.2",
        "1.9.02",
        "V1.9.2",
        "1.9.2-",
        "1.9.2-rc..1",
        "1.9.2-01",
        "1.9.2+b5",
        "vv1.9.2",
        "1.9.2.1",
    ],
)
def test_other_tags_are_not_versions(tag: str) -> None:
    assert parse_version(tag) is None


def test_semver_precedence() -> None:
    # SemVer 2.0 §11's own example, in ascending order.
    ordered = [
        "1.0.0-alpha",
        "1.0.0-alpha.1",
        "1.0.0-alpha.beta",
        "1.0.0-beta",
        "1.0.0-beta.2",
        "1.0.0-beta.11",
        "1.0.0-rc.1",
        "1.0.0",
        "1.0.1",
        "1.1.0",
        "1.10.0",
        "2.0.0",
    ]
    versions = [v(tag) for tag in ordered]
    assert sorted(reversed(versions)) == versions
    assert all(a < b for a, b in itertools.pairwise(versions))


def test_build_metadata_is_ignored_for_ordering() -> None:
    assert v("1.9.2_b1") == v("1.9.2_b2") == v("1.9.2")
    assert not v("1.9.2_b1") < v("1.9.2")


@pytest.mark.parametrize("tag", ["1", "1.9", "v1", "v1.9", "latest", "0", "10.0"])
def test_floating_tags(tag: str) -> None:
    assert is_floating_tag(tag)


@pytest.mark.parametrize("tag", ["1.9.2", "stable", "01", "1.09", "v", "V1", "1.9-rc"])
def test_not_floating_tags(tag: str) -> None:
    assert not is_floating_tag(tag)


def test_floating_tags_use_the_versions_prefix() -> None:
    assert v("1.9.2").floating_tags() == ("1.9", "1", "latest")
    assert v("v1.9.2").floating_tags() == ("v1.9", "v1", "latest")


def test_lines() -> None:
    assert in_line(v("1.9.2"), "1.9") and in_line(v("1.9.2"), "1") and in_line(v("1.9.2"), "latest")
    assert not in_line(v("1.9.2"), "1.8") and not in_line(v("1.9.2"), "2")
    assert not in_line(v("v1.9.2"), "1.9") and in_line(v("v1.9.2"), "v1.9")
    assert in_line(v("v1.9.2"), "latest")


def test_highest_release_skips_prereleases_and_prefers_the_last_of_equals() -> None:
    versions = [v("1.9.1"), v("1.9.3-rc.1"), v("2.0.0"), v("1.9.2_b1"), v("1.9.2_b2")]
    assert highest_release(versions, "1.9").tag == "1.9.2_b2"  # type: ignore[union-attr]
    assert highest_release(versions, "latest").tag == "2.0.0"  # type: ignore[union-attr]
    assert highest_release(versions, "3") is None
    assert highest_release([v("2.0.0-rc.1")], "2") is None


numbers = st.integers(min_value=0, max_value=30)


@given(st.lists(st.tuples(numbers, numbers, numbers), min_size=1, max_size=20))
def test_highest_release_is_the_maximum_of_the_line(triples: list[tuple[int, int, int]]) -> None:
    versions = [v(f"{a}.{b}.{c}") for a, b, c in triples]
    best = highest_release(versions, "latest")
    assert best is not None
    assert (best.major, best.minor, best.patch) == max(triples)
    major = triples[0][0]
    in_major = [t for t in triples if t[0] == major]
    best_in_major = highest_release(versions, str(major))
    assert best_in_major is not None
    assert (best_in_major.major, best_in_major.minor, best_in_major.patch) == max(in_major)


identifiers = st.one_of(
    st.integers(min_value=0, max_value=10**40).map(str),
    st.from_regex(r"[0-9A-Za-z-]{1,6}", fullmatch=True).filter(
        lambda part: not (part.isdigit() and part != "0" and part.startswith("0"))
    ),
)
versions = st.builds(
    lambda prefix, core, prerelease, build: v(
        prefix
        + ".".join(map(str, core))
        + (f"-{'.'.join(prerelease)}" if prerelease else "")
        + (f"_{build}" if build else "")
    ),
    st.sampled_from(["", "v"]),
    st.tuples(*[st.one_of(numbers, st.integers(min_value=0, max_value=10**60))] * 3),
    st.lists(identifiers, max_size=4),
    st.sampled_from([None, "b1", "exp.sha-5"]),
)


@given(versions, versions)
def test_precedence_keys_compare_bytewise_as_semver_does(a, b) -> None:
    assert (a.precedence_key() < b.precedence_key()) == (a < b)
    assert (a.precedence_key() == b.precedence_key()) == (a == b)


def test_precedence_keys_of_the_semver_example_ascend() -> None:
    ordered = ["1.0.0-alpha", "1.0.0-alpha.1", "1.0.0-alpha.beta", "1.0.0-beta", "1.0.0-beta.2"]
    ordered += ["1.0.0-beta.11", "1.0.0-rc.1", "1.0.0", "1.0.1", "1.1.0", "1.10.0", "2.0.0"]
    keys = [v(tag).precedence_key() for tag in ordered]
    assert all(a < b for a, b in itertools.pairwise(keys))


@given(versions, st.sampled_from(["1", "1.9", "v1", "v1.9", "0", "10.0", "latest"]))
def test_a_line_holds_exactly_the_keys_of_its_versions(version, floating) -> None:
    line = line_of(floating)
    assert line is not None
    inside = line.low <= version.precedence_key() < line.high and line.prefix in (
        None,
        version.prefix,
    )
    assert inside == in_line(version, floating)


@given(st.sampled_from(["0", "1", "1.9", "v1.9"]), numbers, numbers, numbers)
def test_lines_hold_their_own_releases(floating, major, minor, patch) -> None:
    # Random versions rarely fall in a given line; these are built to.
    line = line_of(floating)
    assert line is not None
    prefix = line.prefix or ""
    head = floating.removeprefix("v").split(".")
    tag = ".".join([*head, *map(str, [major, minor, patch][len(head) :])])
    version = v(prefix + tag)
    assert line.low <= version.precedence_key() < line.high


def test_only_floating_tags_have_lines() -> None:
    assert line_of("1.9.2") is None and line_of("stable") is None and line_of("01") is None
