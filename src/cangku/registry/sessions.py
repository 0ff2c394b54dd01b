"""Upload sessions: kept in blob storage only, under a name that binds them to a repository.

A client knows its session by the upload id in the `Location` we gave it (32 hex digits).
Storage knows it as that id followed by a key of the repository it was started in, so the
same id under another repository's URL finds nothing (BLOB_UPLOAD_UNKNOWN) without any
database row: starting, checking and finishing a session cost no metadata transaction.
Garbage collection expires sessions by their file's last modification.
"""

from __future__ import annotations

import hashlib
import re
import uuid

from cangku.content.errors import BlobUploadUnknown
from cangku.content.names import validate_repository_name

UPLOAD_ID = re.compile(r"[a-f0-9]{32}")
_KEY_LENGTH = 32


def new_upload_id() -> str:
    return uuid.uuid4().hex


def session_name(repository: str, upload_id: str) -> str:
    """Storage's name for the session `upload_id` of `repository` (64 hex digits); both
    are checked (NAME_INVALID, BLOB_UPLOAD_UNKNOWN)."""
    validate_repository_name(repository)
    if not UPLOAD_ID.fullmatch(upload_id):
        raise BlobUploadUnknown("upload unknown to registry", upload_id[:100])
    return upload_id + _repository_key(repository)


def upload_id_of(session: str) -> str:
    return session[:32]


def belongs_to(session: str, repository: str) -> bool:
    return session.endswith(_repository_key(repository))


def _repository_key(repository: str) -> str:
    return hashlib.sha256(repository.encode()).hexdigest()[:_KEY_LENGTH]
