"""Domain errors carrying the OCI distribution-spec error code: the one error table.

Each class declares, once, its OCI error code (`code`, OCI dist-spec "Error Codes"), the
HTTP status it is answered with (`status`) and the headers it needs (`headers()`: `Range`,
`Content-Range`, `Retry-After`). The 401s of authentication exist only in HTTP and live in
`auth/errors.py`. One function, `cangku.http_errors.render_error`, turns them all into
responses for /v2, /auth/token, /api/v1 and the pages; no other module picks their status.

    RegistryError
    ├── BlobUnknown, BlobUploadUnknown, DigestInvalid, ManifestBlobUnknown, ManifestInvalid,
    │   ManifestUnknown, NameInvalid, NameUnknown, Denied, RequestInvalid,
    │   PaginationNumberInvalid
    ├── BlobUploadInvalid ── UploadOutOfOrder (416)
    ├── SizeInvalid ── PayloadTooLarge (413), RangeInvalid (416)
    ├── Unsupported ── TooManyTags (414)
    └── TooManyRequests (429, with Retry-After)
"""

from __future__ import annotations

from typing import Any


class RegistryError(Exception):
    """An error a client can act on; `code` is one of the spec's error codes."""

    code = "UNKNOWN"
    # The HTTP status this error is answered with (OCI dist-spec "Error Codes" table).
    status = 400

    def __init__(self, message: str, detail: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail

    def headers(self) -> dict[str, str]:
        """The response headers this error needs besides the body (none by default)."""
        return {}


class BlobUnknown(RegistryError):
    code = "BLOB_UNKNOWN"
    status = 404


class BlobUploadInvalid(RegistryError):
    code = "BLOB_UPLOAD_INVALID"


class UploadOutOfOrder(BlobUploadInvalid):
    """A chunk that does not start where the upload ends, or whose Content-Range cannot be
    read (answered with 416 and the Range received so far; OCI dist-spec "Pushing a blob in
    chunks")."""

    status = 416

    def __init__(self, message: str, current_size: int) -> None:
        super().__init__(message)
        self.current_size = current_size

    def headers(self) -> dict[str, str]:
        # The bytes received so far; an empty upload still says `0-0` (as Distribution does).
        return {"Range": f"0-{max(self.current_size - 1, 0)}"}


class BlobUploadUnknown(RegistryError):
    code = "BLOB_UPLOAD_UNKNOWN"
    status = 404


class DigestInvalid(RegistryError):
    code = "DIGEST_INVALID"


class ManifestBlobUnknown(RegistryError):
    code = "MANIFEST_BLOB_UNKNOWN"


class ManifestInvalid(RegistryError):
    code = "MANIFEST_INVALID"


class ManifestUnknown(RegistryError):
    code = "MANIFEST_UNKNOWN"
    status = 404


class NameInvalid(RegistryError):
    code = "NAME_INVALID"


class NameUnknown(RegistryError):
    code = "NAME_UNKNOWN"
    status = 404


class SizeInvalid(RegistryError):
    code = "SIZE_INVALID"


class PayloadTooLarge(SizeInvalid):
    """A body over a hard limit (answered with 413)."""

    status = 413


class Denied(RegistryError):
    code = "DENIED"
    status = 403


class Unsupported(RegistryError):
    code = "UNSUPPORTED"
    status = 405


class TooManyTags(Unsupported):
    """More `?tag=` parameters on one manifest PUT than we take (answered with 414; OCI
    dist-spec main, "Pushing manifests with multiple tags")."""

    status = 414


class TooManyRequests(RegistryError):
    """429; `retry_after` (whole seconds) becomes the Retry-After header (RFC 6585 §4)."""

    code = "TOOMANYREQUESTS"
    status = 429

    def __init__(self, message: str, retry_after: float = 1.0, detail: Any = None) -> None:
        super().__init__(message, detail)
        self.retry_after = max(1, int(retry_after + 0.999))

    def headers(self) -> dict[str, str]:
        # OCI dist-spec main: a 429 SHOULD say when to come back.
        return {"Retry-After": str(self.retry_after)}


class Unavailable(RegistryError):
    """503: content mirrored from an upstream registry that could not be reached and was never
    cached (docs/proxy.md). The code is Distribution's own `UNAVAILABLE`."""

    code = "UNAVAILABLE"
    status = 503


class DeliveryUnknown(RegistryError):
    """An event delivery id the JSON API does not know (issue 16), answered with 404."""

    code = "DELIVERY_UNKNOWN"
    status = 404


class WebhookUnknown(RegistryError):
    """A webhook id the JSON API does not know (issue 16), answered with 404."""

    code = "WEBHOOK_UNKNOWN"
    status = 404


class RequestInvalid(RegistryError):
    """A malformed body or query for the JSON API (/api/v1), answered with 400."""

    code = "REQUEST_INVALID"


class PaginationNumberInvalid(RegistryError):
    """An `n` that is not a non-negative integer (the reference registry's code)."""

    code = "PAGINATION_NUMBER_INVALID"


class RangeInvalid(SizeInvalid):
    """A blob Range header that cannot be satisfied (answered with 416 and
    `Content-Range: bytes */SIZE`, RFC 9110 §15.5.17). The blob exists, so the code is not
    BLOB_UNKNOWN: the spec's nearest is SIZE_INVALID (the range lies outside the blob)."""

    status = 416

    def __init__(self, message: str, blob_size: int) -> None:
        super().__init__(message)
        self.blob_size = blob_size

    def headers(self) -> dict[str, str]:
        return {"Content-Range": f"bytes */{self.blob_size}"}
