"""Which S3 client for storage/s3.py: boto3 in worker threads, aiobotocore or obstore.

Measures, against the endpoint in the usual AWS/S3 env (start-ceph-rgw.sh's s3.env):
a 64 MiB PUT as 8 MiB multipart parts, its streamed GET, 200 sequential HEADs and 200 HEADs
16 at a time, in the event loop the way the server would call them. Run with each client
installed (aiobotocore pins botocore, so it needs its own venv):

    set -a; . /tmp/ceph-rgw/s3.env; set +a; python benchmarks/s3_clients.py
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Awaitable, Callable

ENDPOINT = os.environ["S3_ENDPOINT_URL"]
BUCKET = os.environ.get("S3_BUCKET", "registry")
REGION = os.environ.get("AWS_DEFAULT_REGION", "us-east-1")
PART = 8 * 1024 * 1024
DATA = os.urandom(64 * 1024 * 1024)
HEADS = 200


async def timed(label: str, action: Callable[[], Awaitable[object]], mib: float = 0) -> None:
    started = time.perf_counter()
    await action()
    seconds = time.perf_counter() - started
    rate = f"{mib / seconds:7.0f} MiB/s" if mib else f"{HEADS / seconds:7.0f} req/s"
    print(f"  {label:<22} {seconds * 1000:8.0f} ms {rate}")


async def limited(count: int, make: Callable[[], Awaitable[object]]) -> None:
    gate = asyncio.Semaphore(16)

    async def one() -> None:
        async with gate:
            await make()

    await asyncio.gather(*(one() for _ in range(count)))


async def boto3_in_threads() -> None:
    import boto3
    from botocore.config import Config

    client = boto3.client(
        "s3",
        endpoint_url=ENDPOINT,
        region_name=REGION,
        config=Config(s3={"addressing_style": "path"}, max_pool_connections=32),
    )
    key = f"bench/{uuid.uuid4().hex}"

    async def put() -> None:
        upload = await asyncio.to_thread(client.create_multipart_upload, Bucket=BUCKET, Key=key)
        parts = []
        for number, offset in enumerate(range(0, len(DATA), PART), 1):
            answer = await asyncio.to_thread(
                client.upload_part,
                Bucket=BUCKET,
                Key=key,
                UploadId=upload["UploadId"],
                PartNumber=number,
                Body=DATA[offset : offset + PART],
            )
            parts.append({"PartNumber": number, "ETag": answer["ETag"]})
        await asyncio.to_thread(
            client.complete_multipart_upload,
            Bucket=BUCKET,
            Key=key,
            UploadId=upload["UploadId"],
            MultipartUpload={"Parts": parts},
        )

    async def get() -> None:
        body = (await asyncio.to_thread(client.get_object, Bucket=BUCKET, Key=key))["Body"]
        while await asyncio.to_thread(body.read, 1024 * 1024):
            pass

    async def head() -> None:
        await asyncio.to_thread(client.head_object, Bucket=BUCKET, Key=key)

    async def heads() -> None:
        for _ in range(HEADS):
            await head()

    print("boto3 in threads")
    await timed("PUT 64 MiB multipart", put, 64)
    await timed("GET 64 MiB streamed", get, 64)
    await timed("HEAD x200 sequential", heads)
    await timed("HEAD x200, 16 at once", lambda: limited(HEADS, head))
    client.delete_object(Bucket=BUCKET, Key=key)


async def aiobotocore_client() -> None:
    from aiobotocore.config import AioConfig
    from aiobotocore.session import get_session

    config = AioConfig(s3={"addressing_style": "path"}, max_pool_connections=32)
    async with get_session().create_client(
        "s3", endpoint_url=ENDPOINT, region_name=REGION, config=config
    ) as client:
        key = f"bench/{uuid.uuid4().hex}"

        async def put() -> None:
            upload = await client.create_multipart_upload(Bucket=BUCKET, Key=key)
            parts = []
            for number, offset in enumerate(range(0, len(DATA), PART), 1):
                answer = await client.upload_part(
                    Bucket=BUCKET,
                    Key=key,
                    UploadId=upload["UploadId"],
                    PartNumber=number,
                    Body=DATA[offset : offset + PART],
                )
                parts.append({"PartNumber": number, "ETag": answer["ETag"]})
            await client.complete_multipart_upload(
                Bucket=BUCKET,
                Key=key,
                UploadId=upload["UploadId"],
                MultipartUpload={"Parts": parts},
            )

        async def get() -> None:
            answer = await client.get_object(Bucket=BUCKET, Key=key)
            async with answer["Body"] as body:
                while await body.read(1024 * 1024):
                    pass

        async def head() -> None:
            await client.head_object(Bucket=BUCKET, Key=key)

        async def heads() -> None:
            for _ in range(HEADS):
                await head()

        print("aiobotocore")
        await timed("PUT 64 MiB multipart", put, 64)
        await timed("GET 64 MiB streamed", get, 64)
        await timed("HEAD x200 sequential", heads)
        await timed("HEAD x200, 16 at once", lambda: limited(HEADS, head))
        await client.delete_object(Bucket=BUCKET, Key=key)


async def obstore_client() -> None:
    import obstore
    from obstore.store import S3Store

    store = S3Store(
        BUCKET,
        endpoint=ENDPOINT,
        region=REGION,
        virtual_hosted_style_request=False,
        client_options={"allow_http": True},
    )
    key = f"bench/{uuid.uuid4().hex}"

    async def put() -> None:
        parts = [DATA[offset : offset + PART] for offset in range(0, len(DATA), PART)]
        await obstore.put_async(store, key, parts, chunk_size=PART, max_concurrency=1)

    async def get() -> None:
        answer = await obstore.get_async(store, key)
        async for _ in answer.stream(1024 * 1024):
            pass

    async def head() -> None:
        await obstore.head_async(store, key)

    async def heads() -> None:
        for _ in range(HEADS):
            await head()

    print("obstore")
    await timed("PUT 64 MiB multipart", put, 64)
    await timed("GET 64 MiB streamed", get, 64)
    await timed("HEAD x200 sequential", heads)
    await timed("HEAD x200, 16 at once", lambda: limited(HEADS, head))
    await obstore.delete_async(store, key)


async def main() -> None:
    for run in (boto3_in_threads, aiobotocore_client, obstore_client):
        try:
            await run()
        except ImportError as error:
            print(f"{run.__name__}: not installed ({error.name})")


if __name__ == "__main__":
    asyncio.run(main())
