"""The real S3 store the tests use: Ceph RGW from ../shared/scripts/start-ceph-rgw.sh.

CANGKU_TEST_S3 names the `s3.env` file that script writes (KEY=VALUE lines: S3_ENDPOINT_URL,
AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION, S3_BUCKET). Without it the S3
tests skip, or fail when CANGKU_REQUIRE_CLIENTS=1. Every test gets its own key prefix under
one prefix per test run, so runs and tests never see each other's objects.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cangku.config import S3Settings
from cangku.storage.s3 import S3Storage

RUN_PREFIX = f"cangku-test-{uuid.uuid4().hex[:12]}/"


def s3_settings(prefix: str | None = None, *, redirect: bool = False) -> S3Settings:
    """Settings for the test store under a fresh prefix; skips (or fails) without one."""
    source = os.environ.get("CANGKU_TEST_S3")
    if not source or not Path(source).is_file():
        message = f"no S3 store for tests: CANGKU_TEST_S3={source!r} is not an s3.env file"
        if os.environ.get("CANGKU_REQUIRE_CLIENTS") == "1":
            pytest.fail(f"{message} (CANGKU_REQUIRE_CLIENTS=1)", pytrace=False)
        pytest.skip(message)
    values: dict[str, str] = {}
    for line in Path(source).read_text().splitlines():
        key, _, value = line.partition("=")
        values[key.strip()] = value.strip()
    return S3Settings(
        bucket=values.get("S3_BUCKET", "registry"),
        prefix=prefix or f"{RUN_PREFIX}{uuid.uuid4().hex[:12]}/",
        endpoint=values["S3_ENDPOINT_URL"],
        region=values.get("AWS_DEFAULT_REGION", "us-east-1"),
        path_style=True,
        access_key_id=values["AWS_ACCESS_KEY_ID"],
        secret_access_key=values["AWS_SECRET_ACCESS_KEY"],
        redirect=redirect,
    )


def remove_everything(storage: S3Storage) -> None:
    """Every object and multipart upload under the storage's prefix (test teardown)."""
    client, bucket = storage.client, storage.bucket
    for uploads in client.get_paginator("list_multipart_uploads").paginate(
        Bucket=bucket, Prefix=storage.prefix
    ):
        for upload in uploads.get("Uploads", []):
            client.abort_multipart_upload(
                Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"]
            )
    for page in client.get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix=storage.prefix
    ):
        keys: list[Any] = [{"Key": entry["Key"]} for entry in page.get("Contents", [])]
        if keys:
            client.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})


@contextlib.contextmanager
def s3_storage(*, redirect: bool = False) -> Iterator[S3Storage]:
    """S3 on the test store under a prefix of its own, emptied afterwards."""
    storage = S3Storage.from_settings(s3_settings(redirect=redirect))
    try:
        yield storage
    finally:
        remove_everything(storage)
