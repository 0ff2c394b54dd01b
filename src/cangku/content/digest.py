"""Content digests: `algorithm:hex`, validated against the algorithms we can verify."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cangku.content.errors import DigestInvalid

if TYPE_CHECKING:
    from hashlib import _Hash

# OCI image-spec "Digests": registered algorithms and their encoded lengths.
HEX_LENGTHS = {"sha256": 64, "sha512": 128}
# The general grammar; a well-formed digest of an algorithm we do not verify is refused too.
DIGEST_GRAMMAR = re.compile(r"^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$")
HEX = re.compile(r"^[a-f0-9]+$")


@dataclass(frozen=True, slots=True)
class Digest:
    algorithm: str
    hex: str

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"

    @classmethod
    def parse(cls, value: str) -> Digest:
        """Parse and validate; only sha256 and sha512 digests are ever accepted."""
        if len(value) > 200 or not DIGEST_GRAMMAR.fullmatch(value):
            raise DigestInvalid(f"invalid digest {value[:100]!r}")
        algorithm, _, encoded = value.partition(":")
        expected_length = HEX_LENGTHS.get(algorithm)
        if expected_length is None:
            raise DigestInvalid(f"unsupported digest algorithm {algorithm!r}")
        if len(encoded) != expected_length or not HEX.fullmatch(encoded):
            raise DigestInvalid(f"invalid {algorithm} digest {value[:100]!r}")
        return cls(algorithm, encoded)

    @classmethod
    def of(cls, data: bytes, algorithm: str = "sha256") -> Digest:
        return cls(algorithm, hashlib.new(algorithm, data).hexdigest())

    def hasher(self) -> _Hash:
        return hashlib.new(self.algorithm)


def new_hasher(algorithm: str) -> _Hash:
    return hashlib.new(algorithm)
