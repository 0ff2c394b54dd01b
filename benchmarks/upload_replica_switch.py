"""What a chunked upload costs when its commit lands on another replica (issue 15).

The S3 driver keeps each session's running sha256 in the process that appended (hashlib's
state cannot be exported); a commit on a process without it re-hashes by reading the
assembled object back. This times a 64 MiB session (8 MiB PATCHes) committed on the process
that appended it against one committed on a fresh process, wall clock and this process's CPU,
alternating the two kinds, against the store in the usual s3.env (start-ceph-rgw.sh):

    export CANGKU_TEST_S3=/tmp/ceph-rgw/s3.env PYTHONPATH=.
    .venv/bin/python benchmarks/upload_replica_switch.py
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

from cangku.config import S3Settings
from cangku.content.digest import Digest
from cangku.storage.s3 import S3Storage

MiB = 1024 * 1024
DATA = os.urandom(64 * MiB)
CHUNK = 8 * MiB
ROUNDS = 4


def settings() -> S3Settings:
    values = dict(
        line.split("=", 1)
        for line in Path(os.environ["CANGKU_TEST_S3"]).read_text().splitlines()
        if "=" in line
    )
    return S3Settings(
        bucket=values.get("S3_BUCKET", "registry"),
        prefix=f"bench-{uuid.uuid4().hex[:8]}/",
        endpoint=values["S3_ENDPOINT_URL"],
        region=values.get("AWS_DEFAULT_REGION", "us-east-1"),
        path_style=True,
        access_key_id=values["AWS_ACCESS_KEY_ID"],
        secret_access_key=values["AWS_SECRET_ACCESS_KEY"],
    )


async def chunks(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def one(storage: S3Storage, switch: bool) -> tuple[float, float]:
    upload_id = uuid.uuid4().hex * 2
    await storage.create_upload(upload_id)
    for start in range(0, len(DATA), CHUNK):
        part = DATA[start : start + CHUNK]
        await storage.append_upload(upload_id, chunks(part), len(part))
    committer = S3Storage(storage.client, storage.bucket, storage.prefix) if switch else storage
    wall, cpu = time.perf_counter(), time.process_time()
    await committer.commit_upload(upload_id, Digest.of(DATA))
    return time.perf_counter() - wall, time.process_time() - cpu


async def main() -> None:
    storage = S3Storage.from_settings(settings())
    results: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
    try:
        for _ in range(ROUNDS):
            for switch in (False, True):
                results[switch].append(await one(storage, switch))
    finally:
        from tests.s3 import remove_everything

        remove_everything(storage)
    for switch, label in ((False, "commit on the same replica"), (True, "commit on another")):
        walls = [wall for wall, _ in results[switch]]
        cpus = [cpu for _, cpu in results[switch]]
        print(
            f"{label:<28} median {statistics.median(walls) * 1000:6.0f} ms wall, "
            f"{statistics.median(cpus) * 1000:5.0f} ms CPU (64 MiB, {ROUNDS} rounds)"
        )


if __name__ == "__main__":
    asyncio.run(main())
