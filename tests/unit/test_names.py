"""Repository names, tags and references against the OCI distribution-spec grammar."""

from __future__ import annotations

import re

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from cangku.content.digest import Digest
from cangku.content.errors import DigestInvalid, ManifestInvalid, NameInvalid
from cangku.content.names import (
    is_tag,
    namespace_of,
    parse_reference,
    validate_repository_name,
    validate_tag,
)

# The spec's grammar, restated here so the tests do not trust the module's own regex.
SPEC_COMPONENT = r"[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*"
SPEC_NAME = re.compile(rf"{SPEC_COMPONENT}(/{SPEC_COMPONENT})*")
SPEC_TAG = re.compile(r"[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}")


@pytest.mark.parametrize(
    "name",
    [
        "a",
        "0",
        "ubuntu",
        "library/ubuntu",
        "org/team/app",
        "a/b/c/d/e/f/g",
        "my.app",
        "my_app",
        "my__app",
        "my-app",
        "my--app",
        "my---app",
        "a-b.c_d__e/f0",
        "123/456",
        "a" * 255,
        "/".join(["abcdefg"] * 32),  # 255 characters in 32 components
    ],
)
def test_valid_repository_names_are_accepted_unchanged(name: str) -> None:
    assert validate_repository_name(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        "A",
        "Library/ubuntu",
        "library/Ubuntu",
        "-app",
        "app-",
        ".app",
        "app.",
        "_app",
        "app_",
        "a..b",
        "a.-b",
        "a-.b",
        "a___b",
        "a._b",
        "/app",
        "app/",
        "org//app",
        "org/./app",
        "org/../app",
        "../app",
        "../../etc/passwd",
        "org/-app",
        "org/app./x",
        "my app",
        "org:app",
        "org@app",
        "org\\app",
        "ünïcode",
        "a\x00b",
    ],
)
def test_names_outside_the_grammar_are_rejected(name: str) -> None:
    with pytest.raises(NameInvalid):
        validate_repository_name(name)


@pytest.mark.parametrize("name", ["library/ubuntu\n", "a\n"])
def test_name_with_trailing_newline_is_rejected(name: str) -> None:
    # `$` in a regex also matches before a final "\n".
    with pytest.raises(NameInvalid):
        validate_repository_name(name)


@pytest.mark.parametrize(
    "name", ["a" * 256, "/".join(["abcdefg"] * 32) + "h"], ids=["one-component", "many"]
)
def test_names_longer_than_255_characters_are_rejected(name: str) -> None:
    assert len(name) == 256
    with pytest.raises(NameInvalid):
        validate_repository_name(name)


def test_name_invalid_carries_the_oci_error_code_and_a_bounded_message() -> None:
    with pytest.raises(NameInvalid) as caught:
        validate_repository_name("A" * 100_000)

    assert caught.value.code == "NAME_INVALID"
    assert len(caught.value.message) < 400


_alphanumerics = st.text(alphabet="abcxyz0189", min_size=1, max_size=8)
_separators = st.sampled_from([".", "_", "__", "-", "--", "---"])
_components = st.builds(
    lambda first, rest: first + "".join(separator + part for separator, part in rest),
    _alphanumerics,
    st.lists(st.tuples(_separators, _alphanumerics), max_size=4),
)
grammar_names = st.lists(_components, min_size=1, max_size=6).map("/".join)


@given(grammar_names)
def test_every_name_the_grammar_generates_is_accepted_unchanged(name: str) -> None:
    assert validate_repository_name(name) == name


@given(st.text(alphabet="ab09._-/A \n", max_size=40))
@example("a\n")
def test_a_name_is_accepted_exactly_when_it_matches_the_grammar(name: str) -> None:
    try:
        accepted = validate_repository_name(name) == name
    except NameInvalid:
        accepted = False

    assert accepted == bool(SPEC_NAME.fullmatch(name))


@pytest.mark.parametrize(
    ("name", "namespace"),
    [("org/team/app", "org"), ("library/ubuntu", "library"), ("app", "app")],
)
def test_namespace_is_the_first_component(name: str, namespace: str) -> None:
    assert namespace_of(name) == namespace


@pytest.mark.parametrize(
    "tag",
    ["latest", "v1.2.3", "1.0", "_private", "A", "Release-Candidate_1.0", "a" * 128, "0"],
)
def test_valid_tags_are_accepted(tag: str) -> None:
    assert is_tag(tag)
    assert validate_tag(tag) == tag


@pytest.mark.parametrize(
    "tag",
    ["", ".hidden", "-dash", "a" * 129, "a:b", "a/b", "a@b", "a b", "ü", "a\x00"],
    ids=[
        "empty",
        "leading-dot",
        "leading-dash",
        "129-chars",
        "colon",
        "slash",
        "at",
        "space",
        "non-ascii",
        "nul",
    ],
)
def test_invalid_tags_are_rejected(tag: str) -> None:
    assert not is_tag(tag)
    with pytest.raises(ManifestInvalid):
        validate_tag(tag)


@pytest.mark.parametrize("tag", ["latest\n", "a" * 128 + "\n"], ids=["short", "128-chars"])
def test_tag_with_trailing_newline_is_rejected(tag: str) -> None:
    assert not is_tag(tag)


@given(st.text(alphabet="aZ09._-:/ \n", max_size=140))
@example("latest\n")
def test_a_tag_is_accepted_exactly_when_it_matches_the_grammar(tag: str) -> None:
    assert is_tag(tag) == bool(SPEC_TAG.fullmatch(tag))


def test_parse_reference_returns_a_tag_as_a_string() -> None:
    assert parse_reference("v1.0") == "v1.0"


def test_parse_reference_returns_a_digest_for_anything_with_a_colon() -> None:
    digest = Digest.of(b"manifest")

    assert parse_reference(str(digest)) == digest


@pytest.mark.parametrize("reference", ["sha256:abc", "latest:1", "md5:00"])
def test_parse_reference_rejects_bad_digests_as_digest_invalid(reference: str) -> None:
    with pytest.raises(DigestInvalid):
        parse_reference(reference)


@pytest.mark.parametrize("reference", ["", ".tag", "a" * 129, "../x"])
def test_parse_reference_rejects_bad_tags_as_manifest_invalid(reference: str) -> None:
    with pytest.raises(ManifestInvalid):
        parse_reference(reference)
