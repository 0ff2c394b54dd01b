"""Digest strings: only well-formed sha256 and sha512 digests are ever accepted."""

from __future__ import annotations

import hashlib
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cangku.content.digest import Digest
from cangku.content.errors import DigestInvalid

EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
EMPTY_SHA512 = hashlib.sha512(b"").hexdigest()
# The only digests we accept, written independently of the module under test.
CANONICAL = re.compile(r"sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128}")


def test_parse_accepts_sha256() -> None:
    digest = Digest.parse(f"sha256:{EMPTY_SHA256}")

    assert digest == Digest("sha256", EMPTY_SHA256)


def test_parse_accepts_sha512() -> None:
    digest = Digest.parse(f"sha512:{EMPTY_SHA512}")

    assert digest == Digest("sha512", EMPTY_SHA512)


def test_str_is_algorithm_colon_hex() -> None:
    assert str(Digest("sha256", EMPTY_SHA256)) == f"sha256:{EMPTY_SHA256}"


def test_parse_rejects_uppercase_hex() -> None:
    with pytest.raises(DigestInvalid):
        Digest.parse(f"sha256:{EMPTY_SHA256.upper()}")


def test_parse_rejects_uppercase_algorithm() -> None:
    with pytest.raises(DigestInvalid):
        Digest.parse(f"SHA256:{EMPTY_SHA256}")


@pytest.mark.parametrize(
    "value",
    [
        f"sha256:{EMPTY_SHA256[:-1]}",
        f"sha256:{EMPTY_SHA256}0",
        "sha256:",
        "sha256:a",
        f"sha256:{EMPTY_SHA512}",
        f"sha512:{EMPTY_SHA256}",
        f"sha512:{EMPTY_SHA512[:-1]}",
    ],
    ids=[
        "sha256-63",
        "sha256-65",
        "sha256-empty-hex",
        "sha256-1",
        "sha256-with-128",
        "sha512-with-64",
        "sha512-127",
    ],
)
def test_parse_rejects_wrong_hex_length(value: str) -> None:
    with pytest.raises(DigestInvalid):
        Digest.parse(value)


@pytest.mark.parametrize(
    "value",
    [
        f"md5:{hashlib.md5(b'').hexdigest()}",
        f"sha1:{hashlib.sha1(b'').hexdigest()}",
        f"sha384:{hashlib.sha384(b'').hexdigest()}",
        f"blake3:{EMPTY_SHA256}",
        f"sha256+b64u:{EMPTY_SHA256}",
        f"multihash+base58:{EMPTY_SHA256}",
    ],
)
def test_parse_rejects_algorithms_we_cannot_verify(value: str) -> None:
    with pytest.raises(DigestInvalid, match="unsupported digest algorithm"):
        Digest.parse(value)


@pytest.mark.parametrize(
    "value",
    [
        "",
        ":",
        EMPTY_SHA256,
        f":{EMPTY_SHA256}",
        "../../etc",
        "../../etc/passwd",
        "sha256:../../etc/passwd",
        f"sha256:{EMPTY_SHA256[:60]}/../",
        f"sha256::{EMPTY_SHA256}",
        f"sha256 :{EMPTY_SHA256}",
        f" sha256:{EMPTY_SHA256}",
        f"sha256:{EMPTY_SHA256} ",
        f"sha256:{EMPTY_SHA256}\x00",
        f"sha256:{EMPTY_SHA256[:32]}\x00{EMPTY_SHA256[33:]}",
        f"sha256:{EMPTY_SHA256}\n",
        f"sha256:{EMPTY_SHA256}:{EMPTY_SHA256}",
        "sha256:ééééé",
    ],
)
def test_parse_rejects_garbage(value: str) -> None:
    with pytest.raises(DigestInvalid):
        Digest.parse(value)


@pytest.mark.parametrize(
    "value",
    [f"sha256:{EMPTY_SHA256[:63]}\n", f"sha512:{EMPTY_SHA512[:127]}\n"],
    ids=["sha256", "sha512"],
)
def test_parse_rejects_trailing_newline_even_when_length_fits(value: str) -> None:
    # `$` in a regex also matches before a final "\n"; the hex part must be hex only.
    with pytest.raises(DigestInvalid):
        Digest.parse(value)


@pytest.mark.parametrize(
    "value",
    ["sha256:" + "a" * 10_000, "a" * 1_000_000, "sha256:" + EMPTY_SHA256 * 1000],
    ids=["long-hex", "one-megabyte", "repeated-digest"],
)
def test_parse_rejects_very_long_strings_with_a_short_message(value: str) -> None:
    with pytest.raises(DigestInvalid) as caught:
        Digest.parse(value)

    assert len(caught.value.message) < 300


def test_digest_invalid_carries_the_oci_error_code() -> None:
    with pytest.raises(DigestInvalid) as caught:
        Digest.parse("nope")

    assert caught.value.code == "DIGEST_INVALID"


def test_of_hashes_with_sha256_by_default() -> None:
    assert Digest.of(b"") == Digest("sha256", EMPTY_SHA256)


def test_of_hashes_with_the_requested_algorithm() -> None:
    assert Digest.of(b"", "sha512") == Digest("sha512", EMPTY_SHA512)


@pytest.mark.parametrize("algorithm", ["sha256", "sha512"])
def test_hasher_produces_the_digest_of_the_same_bytes(algorithm: str) -> None:
    digest = Digest.of(b"hello, registry", algorithm)
    hasher = digest.hasher()
    hasher.update(b"hello, ")
    hasher.update(b"registry")

    assert hasher.name == algorithm
    assert hasher.hexdigest() == digest.hex


def test_digests_compare_and_hash_by_value() -> None:
    parsed = Digest.parse(f"sha256:{EMPTY_SHA256}")

    assert parsed == Digest.of(b"")
    assert {parsed, Digest.of(b"")} == {parsed}
    assert parsed != Digest.of(b"", "sha512")


@given(data=st.binary(), algorithm=st.sampled_from(["sha256", "sha512"]))
def test_parse_of_str_round_trips_any_computed_digest(data: bytes, algorithm: str) -> None:
    digest = Digest.of(data, algorithm)

    assert Digest.parse(str(digest)) == digest


@given(
    st.one_of(
        st.text(),
        st.builds(
            lambda algorithm, encoded: f"{algorithm}:{encoded}",
            st.sampled_from(["sha256", "sha512", "sha384", "SHA256", "sha256+b64u", ""]),
            st.text(alphabet="0123456789abcdefABCDEF:/.=_- \n\x00", min_size=60, max_size=130),
        ),
    )
)
def test_anything_that_parses_is_a_canonical_digest(value: str) -> None:
    try:
        digest = Digest.parse(value)
    except DigestInvalid:
        return

    assert CANONICAL.fullmatch(value)
    assert str(digest) == value
