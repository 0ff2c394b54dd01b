"""Accept headers and whether a stored manifest suits the client that asked."""

from __future__ import annotations

import pytest

from cangku.content.mediatypes import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    IMAGE_MANIFESTS,
    INDEXES,
    MANIFEST_MEDIA_TYPES,
    OCI_INDEX,
    OCI_MANIFEST,
    is_acceptable,
    parse_accept,
)


def test_the_four_manifest_media_types_are_accepted_and_split_into_images_and_indexes() -> None:
    assert {DOCKER_MANIFEST, OCI_MANIFEST} == IMAGE_MANIFESTS
    assert {DOCKER_MANIFEST_LIST, OCI_INDEX} == INDEXES
    assert MANIFEST_MEDIA_TYPES == IMAGE_MANIFESTS | INDEXES
    assert not IMAGE_MANIFESTS & INDEXES


@pytest.mark.parametrize("header", [None, "", " ", ",", " , ,"])
def test_missing_or_empty_accept_yields_no_types(header: str | None) -> None:
    assert parse_accept(header) == []


def test_accept_parameters_and_quality_values_are_dropped() -> None:
    header = f"{OCI_MANIFEST}; q=0.9, {DOCKER_MANIFEST};charset=utf-8;q=0.5"

    assert parse_accept(header) == [OCI_MANIFEST, DOCKER_MANIFEST]


def test_accept_types_are_lowercased_and_trimmed() -> None:
    assert parse_accept("  Application/VND.OCI.Image.Index.v1+JSON  ") == [OCI_INDEX]


def test_several_accept_headers_joined_with_commas_keep_their_order() -> None:
    joined = ", ".join([DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_MANIFEST, OCI_INDEX])

    assert parse_accept(joined) == [DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_MANIFEST, OCI_INDEX]


def test_empty_items_between_commas_are_skipped() -> None:
    assert parse_accept(f"{OCI_MANIFEST},,  ,{OCI_INDEX},") == [OCI_MANIFEST, OCI_INDEX]


@pytest.mark.parametrize("stored", sorted(MANIFEST_MEDIA_TYPES))
def test_a_client_without_accept_takes_any_manifest(stored: str) -> None:
    assert is_acceptable(stored, [])


@pytest.mark.parametrize("stored", sorted(MANIFEST_MEDIA_TYPES))
def test_a_client_naming_the_stored_type_takes_it(stored: str) -> None:
    assert is_acceptable(stored, [DOCKER_MANIFEST, stored])


@pytest.mark.parametrize("wildcard", ["*/*", "application/*"])
def test_a_wildcard_takes_any_manifest_even_beside_other_manifest_types(wildcard: str) -> None:
    assert is_acceptable(OCI_INDEX, [DOCKER_MANIFEST, wildcard])


def test_a_client_naming_only_other_manifest_types_cannot_take_the_stored_one() -> None:
    # An old Docker client that knows schema 2 but not OCI indexes.
    assert not is_acceptable(OCI_INDEX, [DOCKER_MANIFEST])
    assert not is_acceptable(DOCKER_MANIFEST_LIST, [OCI_MANIFEST, OCI_INDEX])


def test_a_client_naming_no_manifest_type_at_all_takes_any_manifest() -> None:
    assert is_acceptable(OCI_MANIFEST, ["application/json", "text/html"])


def test_mixed_case_accept_header_matches_the_stored_type_after_parsing() -> None:
    accepted = parse_accept("Application/Vnd.Docker.Distribution.Manifest.V2+Json")

    assert is_acceptable(DOCKER_MANIFEST, accepted)
    assert not is_acceptable(OCI_MANIFEST, accepted)
