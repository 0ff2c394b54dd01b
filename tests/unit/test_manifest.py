"""Manifest and index parsing: what is accepted, and what a manifest references."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cangku.content import mediatypes
from cangku.content.digest import Digest
from cangku.content.errors import ManifestInvalid
from cangku.content.manifest import MAX_MANIFEST_BYTES, Manifest, parse_manifest
from cangku.content.mediatypes import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    OCI_INDEX,
    OCI_MANIFEST,
)

OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
SBOM_TYPE = "application/spdx+json"
OMIT = object()  # marks a field to leave out of a generated document


def descriptor(
    media_type: str = OCI_LAYER, content: bytes = b"layer", **fields: Any
) -> dict[str, Any]:
    value: dict[str, Any] = {
        "mediaType": media_type,
        "digest": str(Digest.of(content)),
        "size": len(content),
    }
    value.update(fields)
    return {key: item for key, item in value.items() if item is not OMIT}


def image_manifest(media_type: Any = OCI_MANIFEST, **fields: Any) -> dict[str, Any]:
    docker = media_type == DOCKER_MANIFEST
    document: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": descriptor(DOCKER_CONFIG if docker else OCI_CONFIG, b"config"),
        "layers": [
            descriptor(DOCKER_LAYER if docker else OCI_LAYER, b"layer-1"),
            descriptor(DOCKER_LAYER if docker else OCI_LAYER, b"layer-2"),
        ],
    }
    document.update(fields)
    return {key: item for key, item in document.items() if item is not OMIT}


def index(media_type: Any = OCI_INDEX, **fields: Any) -> dict[str, Any]:
    child_type = DOCKER_MANIFEST if media_type == DOCKER_MANIFEST_LIST else OCI_MANIFEST
    document: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "manifests": [
            descriptor(child_type, b"amd64", platform={"architecture": "amd64", "os": "linux"}),
            descriptor(child_type, b"arm64", platform={"architecture": "arm64", "os": "linux"}),
        ],
    }
    document.update(fields)
    return {key: item for key, item in document.items() if item is not OMIT}


def parse(document: dict[str, Any] | bytes, content_type: str | None = None) -> Manifest:
    raw = document if isinstance(document, bytes) else json.dumps(document).encode()
    return parse_manifest(raw, content_type, Digest.of(raw))


# -- media types -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("media_type", "build", "is_index"),
    [
        (OCI_MANIFEST, image_manifest, False),
        (DOCKER_MANIFEST, image_manifest, False),
        (OCI_INDEX, index, True),
        (DOCKER_MANIFEST_LIST, index, True),
    ],
)
def test_every_accepted_media_type_parses(media_type: str, build: Any, is_index: bool) -> None:
    raw = json.dumps(build(media_type)).encode()

    manifest = parse_manifest(raw, media_type, Digest.of(raw))

    assert manifest.media_type == media_type
    assert manifest.is_index is is_index
    assert manifest.digest == Digest.of(raw)
    assert manifest.size == len(raw)


def test_content_type_parameters_and_case_are_ignored() -> None:
    manifest = parse(image_manifest(), "Application/VND.OCI.image.manifest.v1+json; charset=utf-8")

    assert manifest.media_type == OCI_MANIFEST


@pytest.mark.parametrize("content_type", [None, "", "application/json", "application/octet-stream"])
@pytest.mark.parametrize(
    ("media_type", "build"),
    [(DOCKER_MANIFEST, image_manifest), (DOCKER_MANIFEST_LIST, index), (OCI_INDEX, index)],
)
def test_media_type_comes_from_the_body_when_content_type_does_not_name_one(
    content_type: str | None, media_type: str, build: Any
) -> None:
    assert parse(build(media_type), content_type).media_type == media_type


@pytest.mark.parametrize(
    ("media_type", "build"), [(OCI_MANIFEST, image_manifest), (OCI_INDEX, index)]
)
def test_oci_media_type_comes_from_content_type_when_the_body_has_none(
    media_type: str, build: Any
) -> None:
    assert parse(build(OMIT), media_type).media_type == media_type


@pytest.mark.parametrize(
    ("media_type", "build"), [(DOCKER_MANIFEST, image_manifest), (DOCKER_MANIFEST_LIST, index)]
)
def test_docker_type_needs_its_media_type_in_the_body(media_type: str, build: Any) -> None:
    """Otherwise the same bytes could be pushed as an OCI and as a Docker manifest."""
    with pytest.raises(ManifestInvalid, match="must name its mediaType"):
        parse(build(OMIT), media_type)


@pytest.mark.parametrize("content_type", [None, "application/json", OCI_MANIFEST, OCI_INDEX])
def test_document_with_both_index_and_image_fields_and_no_type_is_ambiguous(
    content_type: str | None,
) -> None:
    """CVE-2021-41190: a document both a manifest and an index must not be accepted."""
    document = image_manifest(OMIT, manifests=index()["manifests"])
    with pytest.raises(ManifestInvalid):
        parse(document, content_type)


@pytest.mark.parametrize("media_type", [OCI_MANIFEST, DOCKER_MANIFEST])
@pytest.mark.parametrize("content_type", [None, "from-body"])
def test_image_manifest_with_manifests_field_is_invalid(
    media_type: str, content_type: str | None
) -> None:
    document = image_manifest(media_type, manifests=[])
    with pytest.raises(ManifestInvalid, match="must not have 'manifests'"):
        parse(document, media_type if content_type else None)


@pytest.mark.parametrize("media_type", [OCI_INDEX, DOCKER_MANIFEST_LIST])
@pytest.mark.parametrize("field", ["config", "layers"])
def test_index_with_config_or_layers_is_invalid(media_type: str, field: str) -> None:
    document = index(media_type, **{field: image_manifest()[field]})
    with pytest.raises(ManifestInvalid, match="must not have 'config' or 'layers'"):
        parse(document, media_type)


@pytest.mark.parametrize(
    ("document", "media_type"),
    [(image_manifest(OMIT), OCI_MANIFEST), (index(OMIT), OCI_INDEX)],
    ids=["manifest", "index"],
)
def test_untyped_oci_document_is_recognised_by_its_shape(
    document: dict[str, Any], media_type: str
) -> None:
    assert parse(document, None).media_type == media_type


def test_untyped_document_of_unknown_shape_is_invalid() -> None:
    with pytest.raises(ManifestInvalid):
        parse({"schemaVersion": 2, "layers": []}, None)


@pytest.mark.parametrize(
    ("content_type", "document"),
    [
        (OCI_MANIFEST, image_manifest(DOCKER_MANIFEST)),
        (DOCKER_MANIFEST, image_manifest(OCI_MANIFEST)),
        (OCI_INDEX, image_manifest(OCI_MANIFEST)),
        (OCI_MANIFEST, index(OCI_INDEX)),
        (DOCKER_MANIFEST_LIST, index(OCI_INDEX)),
    ],
)
def test_content_type_contradicting_body_media_type_is_invalid(
    content_type: str, document: dict[str, Any]
) -> None:
    with pytest.raises(ManifestInvalid, match="does not match"):
        parse(document, content_type)


@pytest.mark.parametrize("content_type", [OCI_CONFIG, "text/plain"])
def test_specific_non_manifest_content_type_contradicting_body_media_type_is_invalid(
    content_type: str,
) -> None:
    # OCI dist-spec 1.0.1 (CVE-2021-41190): a mediaType in the body must match Content-Type.
    with pytest.raises(ManifestInvalid):
        parse(image_manifest(OCI_MANIFEST), content_type)


@pytest.mark.parametrize(
    ("content_type", "document"),
    [
        (None, image_manifest("application/vnd.docker.distribution.manifest.v1+prettyjws")),
        ("application/vnd.docker.distribution.manifest.v1+json", image_manifest(OMIT)),
        (None, image_manifest(OCI_CONFIG)),
    ],
    ids=["schema1-in-body", "schema1-content-type", "config-type-in-body"],
)
def test_unsupported_media_type_is_invalid(
    content_type: str | None, document: dict[str, Any]
) -> None:
    with pytest.raises(ManifestInvalid, match="unsupported"):
        parse(document, content_type)


@pytest.mark.parametrize("media_type", [5, ["a"], {"a": 1}, True])
def test_non_string_body_media_type_is_invalid(media_type: Any) -> None:
    with pytest.raises(ManifestInvalid):
        parse(image_manifest(media_type), OCI_MANIFEST)


# -- document shape --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw", [b"", b"{", b"not json", b"\xff\xfe\xfa", b'{"schemaVersion": 2,}', b"{'a': 1}"]
)
def test_broken_json_is_invalid(raw: bytes) -> None:
    with pytest.raises(ManifestInvalid, match="not valid JSON"):
        parse(raw, OCI_MANIFEST)


@pytest.mark.parametrize("raw", [b"[]", b"null", b"2", b'"manifest"', b"true"])
def test_json_that_is_not_an_object_is_invalid(raw: bytes) -> None:
    with pytest.raises(ManifestInvalid, match="JSON object"):
        parse(raw, OCI_MANIFEST)


@pytest.mark.parametrize("raw", [b"[" * 100_000, b'{"a":' * 100_000], ids=["arrays", "objects"])
def test_deeply_nested_json_is_invalid_rather_than_a_crash(raw: bytes) -> None:
    with pytest.raises(ManifestInvalid):
        parse(raw, OCI_MANIFEST)


@pytest.mark.parametrize("schema_version", [1, 3, "2", None, True, OMIT])
def test_schema_version_other_than_2_is_invalid(schema_version: Any) -> None:
    with pytest.raises(ManifestInvalid, match="schemaVersion"):
        parse(image_manifest(schemaVersion=schema_version), OCI_MANIFEST)


@pytest.mark.parametrize(
    "fields",
    [{"config": OMIT}, {"config": None}, {"layers": OMIT}, {"layers": None}, {"layers": {}}],
    ids=["no-config", "null-config", "no-layers", "null-layers", "layers-object"],
)
def test_image_manifest_without_config_or_layers_array_is_invalid(fields: dict[str, Any]) -> None:
    with pytest.raises(ManifestInvalid):
        parse(image_manifest(**fields), OCI_MANIFEST)


@pytest.mark.parametrize("manifests", [OMIT, None, {}, "x"])
def test_index_without_manifests_array_is_invalid(manifests: Any) -> None:
    with pytest.raises(ManifestInvalid, match="manifests"):
        parse(index(manifests=manifests), OCI_INDEX)


def test_manifest_larger_than_4_mib_is_invalid() -> None:
    raw = json.dumps(image_manifest()).encode()
    padded = raw + b" " * (MAX_MANIFEST_BYTES + 1 - len(raw))

    with pytest.raises(ManifestInvalid, match="4 MiB"):
        parse(padded, OCI_MANIFEST)


def test_manifest_of_exactly_4_mib_is_accepted_and_sized_by_its_raw_bytes() -> None:
    raw = json.dumps(image_manifest()).encode()
    padded = raw + b" " * (MAX_MANIFEST_BYTES - len(raw))

    manifest = parse(padded, OCI_MANIFEST)

    assert manifest.size == MAX_MANIFEST_BYTES
    assert manifest.digest == Digest.of(padded)


def test_manifest_invalid_carries_the_oci_error_code() -> None:
    with pytest.raises(ManifestInvalid) as caught:
        parse(b"{", OCI_MANIFEST)

    assert caught.value.code == "MANIFEST_INVALID"


# -- descriptors -----------------------------------------------------------------------------

BAD_DESCRIPTORS: dict[str, Any] = {
    "negative-size": descriptor(size=-1),
    "bool-size": descriptor(size=True),
    "float-size": descriptor(size=5.0),
    "string-size": descriptor(size="5"),
    "null-size": descriptor(size=None),
    "missing-size": descriptor(size=OMIT),
    "bad-digest": descriptor(digest="sha256:1234"),
    "uppercase-digest": descriptor(digest=str(Digest.of(b"x")).upper()),
    "md5-digest": descriptor(digest="md5:d41d8cd98f00b204e9800998ecf8427e"),
    "path-digest": descriptor(digest="../../etc/passwd"),
    "numeric-digest": descriptor(digest=1234),
    "missing-digest": descriptor(digest=OMIT),
    "missing-media-type": descriptor(mediaType=OMIT),
    "empty-media-type": descriptor(mediaType=""),
    "numeric-media-type": descriptor(mediaType=7),
    "platform-not-object": descriptor(platform="linux/amd64"),
    "annotations-not-string-map": descriptor(annotations={"a": 1}),
    "artifact-type-not-string": descriptor(artifactType=3),
    "not-an-object": "sha256:abc",
    "array": [],
}


def _with_bad_descriptor(place: str, bad: Any) -> tuple[dict[str, Any], str]:
    if place == "config":
        return image_manifest(config=bad), OCI_MANIFEST
    if place == "layer":
        return image_manifest(layers=[descriptor(), bad]), OCI_MANIFEST
    if place == "subject":
        return image_manifest(subject=bad), OCI_MANIFEST
    return index(manifests=[descriptor(OCI_MANIFEST), bad]), OCI_INDEX


@pytest.mark.parametrize("place", ["config", "layer", "subject", "index-child"])
@pytest.mark.parametrize("bad", BAD_DESCRIPTORS.values(), ids=BAD_DESCRIPTORS.keys())
def test_bad_descriptor_anywhere_is_manifest_invalid(place: str, bad: Any) -> None:
    document, content_type = _with_bad_descriptor(place, bad)

    with pytest.raises(ManifestInvalid) as caught:
        parse(document, content_type)

    # A bad digest inside a manifest is the manifest's fault, not a DIGEST_INVALID.
    assert caught.value.code == "MANIFEST_INVALID"


@pytest.mark.parametrize("annotations", [["a"], "a", {"a": None}])
def test_manifest_annotations_must_map_strings_to_strings(annotations: Any) -> None:
    with pytest.raises(ManifestInvalid, match="annotations"):
        parse(image_manifest(annotations=annotations), OCI_MANIFEST)


def test_zero_size_descriptor_is_accepted() -> None:
    manifest = parse(image_manifest(config=descriptor(mediatypes.OCI_EMPTY, b"")), OCI_MANIFEST)

    assert manifest.blobs[0].size == 0


def test_unknown_fields_are_accepted_and_ignored() -> None:
    document = image_manifest(
        futureField={"nested": [1, 2, 3]},
        config=descriptor(OCI_CONFIG, b"config", urls=["https://example.com"], x_vendor=True),
        layers=[descriptor(data="bGF5ZXI=", anything=None)],
    )

    manifest = parse(document, OCI_MANIFEST)

    assert [blob.digest for blob in manifest.blobs] == [Digest.of(b"config"), Digest.of(b"layer")]


def test_null_optional_fields_are_treated_as_absent() -> None:
    document = image_manifest(
        annotations=None,
        artifactType=None,
        config=descriptor(
            OCI_CONFIG, b"config", annotations=None, platform=None, artifactType=None
        ),
    )

    manifest = parse(document, OCI_MANIFEST)

    assert manifest.annotations is None
    assert manifest.artifact_type == OCI_CONFIG
    assert manifest.blobs[0].annotations is None
    assert manifest.blobs[0].platform is None
    assert manifest.blobs[0].artifact_type is None


def test_null_body_media_type_is_treated_as_absent() -> None:
    assert parse(image_manifest(None), OCI_MANIFEST).media_type == OCI_MANIFEST


def test_null_subject_is_treated_as_absent() -> None:
    manifest = parse(image_manifest(subject=None), OCI_MANIFEST)

    assert manifest.subject is None


# -- references ------------------------------------------------------------------------------


def test_image_manifest_needs_its_config_then_its_layers() -> None:
    manifest = parse(image_manifest(), OCI_MANIFEST)

    assert [(blob.media_type, blob.digest, blob.size) for blob in manifest.blobs] == [
        (OCI_CONFIG, Digest.of(b"config"), len(b"config")),
        (OCI_LAYER, Digest.of(b"layer-1"), len(b"layer-1")),
        (OCI_LAYER, Digest.of(b"layer-2"), len(b"layer-2")),
    ]
    assert manifest.manifests == []


def test_image_manifest_with_no_layers_needs_only_its_config() -> None:
    manifest = parse(image_manifest(layers=[]), OCI_MANIFEST)

    assert [blob.digest for blob in manifest.blobs] == [Digest.of(b"config")]


@pytest.mark.parametrize("layer_type", sorted(mediatypes.NON_DISTRIBUTABLE_LAYERS))
def test_non_distributable_layers_are_not_needed_in_the_registry(layer_type: str) -> None:
    document = image_manifest(
        layers=[descriptor(OCI_LAYER, b"ours"), descriptor(layer_type, b"windows-base")]
    )

    manifest = parse(document, OCI_MANIFEST)

    assert [blob.digest for blob in manifest.blobs] == [Digest.of(b"config"), Digest.of(b"ours")]


@pytest.mark.parametrize("media_type", [OCI_INDEX, DOCKER_MANIFEST_LIST])
def test_index_children_are_listed_in_manifests_with_their_platform(media_type: str) -> None:
    manifest = parse(index(media_type), media_type)

    assert [child.digest for child in manifest.manifests] == [
        Digest.of(b"amd64"),
        Digest.of(b"arm64"),
    ]
    assert [child.platform for child in manifest.manifests] == [
        {"architecture": "amd64", "os": "linux"},
        {"architecture": "arm64", "os": "linux"},
    ]
    assert manifest.blobs == []


def test_empty_index_is_accepted() -> None:
    manifest = parse(index(manifests=[]), OCI_INDEX)

    assert manifest.manifests == []
    assert manifest.is_index


@pytest.mark.parametrize(
    ("build", "media_type"), [(image_manifest, OCI_MANIFEST), (index, OCI_INDEX)]
)
def test_subject_is_parsed(build: Any, media_type: str) -> None:
    subject = descriptor(OCI_MANIFEST, b"the-image")

    manifest = parse(build(media_type, subject=subject), media_type)

    assert manifest.subject is not None
    assert manifest.subject.digest == Digest.of(b"the-image")
    assert manifest.subject.media_type == OCI_MANIFEST
    assert manifest.subject.size == len(b"the-image")


def test_manifest_without_subject_has_none() -> None:
    assert parse(image_manifest(), OCI_MANIFEST).subject is None


def test_artifact_type_is_taken_from_the_manifest() -> None:
    document = image_manifest(
        artifactType=SBOM_TYPE, config=descriptor(mediatypes.OCI_EMPTY, b"{}")
    )

    assert parse(document, OCI_MANIFEST).artifact_type == SBOM_TYPE


def test_artifact_type_falls_back_to_the_config_media_type() -> None:
    document = image_manifest(config=descriptor("application/vnd.example.thing.v1+json", b"{}"))

    assert parse(document, OCI_MANIFEST).artifact_type == "application/vnd.example.thing.v1+json"


def test_index_artifact_type_is_taken_from_the_index_without_fallback() -> None:
    assert parse(index(artifactType=SBOM_TYPE), OCI_INDEX).artifact_type == SBOM_TYPE
    assert parse(index(), OCI_INDEX).artifact_type is None


def test_artifact_type_must_be_a_string() -> None:
    with pytest.raises(ManifestInvalid, match="artifactType"):
        parse(image_manifest(artifactType=["a"]), OCI_MANIFEST)


def test_annotations_and_descriptor_details_are_kept() -> None:
    layer = descriptor(annotations={"org.opencontainers.image.title": "x"}, artifactType=SBOM_TYPE)
    document = image_manifest(annotations={"created": "today"}, layers=[layer])

    manifest = parse(document, OCI_MANIFEST)

    assert manifest.annotations == {"created": "today"}
    assert manifest.blobs[1].annotations == {"org.opencontainers.image.title": "x"}
    assert manifest.blobs[1].artifact_type == SBOM_TYPE


# -- fuzzing ---------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "schemaVersion",
                    "mediaType",
                    "config",
                    "layers",
                    "manifests",
                    "subject",
                    "digest",
                    "size",
                    "annotations",
                    "artifactType",
                    "platform",
                    "x",
                ]
            ),
            children,
            max_size=6,
        )
    ),
    max_leaves=20,
)


@given(
    document=json_values,
    content_type=st.sampled_from([None, "application/json", OCI_MANIFEST, OCI_INDEX, "text/plain"]),
)
def test_parsing_any_json_either_succeeds_or_raises_manifest_invalid(
    document: Any, content_type: str | None
) -> None:
    raw = json.dumps(document).encode()
    try:
        manifest = parse_manifest(raw, content_type, Digest.of(raw))
    except ManifestInvalid as error:
        assert error.code == "MANIFEST_INVALID"
    else:
        assert manifest.media_type in mediatypes.MANIFEST_MEDIA_TYPES
        assert manifest.size == len(raw)


@given(st.binary(max_size=200))
def test_parsing_any_bytes_either_succeeds_or_raises_manifest_invalid(raw: bytes) -> None:
    try:
        manifest = parse_manifest(raw, None, Digest.of(raw))
    except ManifestInvalid as error:
        assert error.code == "MANIFEST_INVALID"
    else:
        assert manifest.size == len(raw)
