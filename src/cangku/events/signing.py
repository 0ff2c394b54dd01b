"""Standard Webhooks signatures (https://www.standardwebhooks.com, spec "Signature scheme").

The signed content is `<webhook-id>.<webhook-timestamp>.<body>`; the signature is the
HMAC-SHA256 of it under the secret's key (the base64 after `whsec_`), sent base64-encoded as
`webhook-signature: v1,<signature>`. Plain `hmac` rather than the `standardwebhooks` package:
signing is these few lines, and the package would bring its own HTTP and date dependencies.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

PREFIX = "whsec_"


def secret_key(secret: str) -> bytes:
    """The HMAC key of a `whsec_<base64>` secret. Raises ValueError for another shape or a
    key outside 24..64 bytes (the spec's range)."""
    if not secret.startswith(PREFIX):
        raise ValueError("an events secret starts with whsec_ (Standard Webhooks)")
    try:
        key = base64.b64decode(secret[len(PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("an events secret is whsec_ and base64") from None
    if not 24 <= len(key) <= 64:
        raise ValueError("an events secret's key is 24 to 64 bytes")
    return key


def signature(secret: str, webhook_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` header value: `v1,<base64 HMAC-SHA256>`."""
    signed = f"{webhook_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()
