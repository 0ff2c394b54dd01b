"""Domain errors carrying the OCI distribution-spec error code.

The HTTP layer maps each code to a status in one place (`distribution/errors.py`).
"""

from __future__ import annotations

from typing import Any


class RegistryError(Exception):
    """An error a client can act on; `code` is one of the spec's error codes."""

    code = "UNKNOWN"

    def __init__(self, message: str, detail: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail


class BlobUnknown(RegistryError):
    code = "BLOB_UNKNOWN"


class BlobUploadInvalid(RegistryError):
    code = "BLOB_UPLOAD_INVALID"


class UploadOutOfOrder(BlobUploadInvalid):
    """A chunk that does not start where the upload ends (answered with 416 and the Range)."""

    def __init__(self, message: str, current_size: int) -> None:
        super().__init__(message)
        self.current_size = current_size


class BlobUploadUnknown(RegistryError):
    code = "BLOB_UPLOAD_UNKNOWN"


class DigestInvalid(RegistryError):
    code = "DIGEST_INVALID"


class ManifestBlobUnknown(RegistryError):
    code = "MANIFEST_BLOB_UNKNOWN"


class ManifestInvalid(RegistryError):
    code = "MANIFEST_INVALID"


class ManifestUnknown(RegistryError):
    code = "MANIFEST_UNKNOWN"


class NameInvalid(RegistryError):
    code = "NAME_INVALID"


class NameUnknown(RegistryError):
    code = "NAME_UNKNOWN"


class SizeInvalid(RegistryError):
    code = "SIZE_INVALID"


class PayloadTooLarge(SizeInvalid):
    """A body over a hard limit (answered with 413)."""


class Unauthorized(RegistryError):
    code = "UNAUTHORIZED"


class Denied(RegistryError):
    code = "DENIED"


class Unsupported(RegistryError):
    code = "UNSUPPORTED"


class TooManyRequests(RegistryError):
    code = "TOOMANYREQUESTS"


class RequestInvalid(RegistryError):
    """A malformed body or query for the JSON API (/api/v1), answered with 400."""

    code = "REQUEST_INVALID"


class PaginationNumberInvalid(RegistryError):
    """An `n` that is not a non-negative integer (the reference registry's code)."""

    code = "PAGINATION_NUMBER_INVALID"


class RangeInvalid(RegistryError):
    """A blob Range header that cannot be satisfied (answered with 416)."""

    code = "BLOB_UNKNOWN"

    def __init__(self, message: str, blob_size: int) -> None:
        super().__init__(message)
        self.blob_size = blob_size
