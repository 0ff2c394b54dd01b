"""Would parallel ranged GETs make an S3 pull faster? (issue 15, docs/performance.md "S3 and
mirror pulls (session 8)").

One object of `--mib` MiB in the store, then `--samples` rounds; in each round every way of
reading it runs `--reads` times, the ways' order alternating by round: one `GetObject` for
the whole object (what storage/s3.py does), and the object cut into 2 and 4 equal ranges
read at once by as many threads (boto3, 1 MiB reads, the bytes dropped). Printed per way,
medians over the rounds: the wall time of one read (ms), the object store's CPU (the
`radosgw` and `ceph-osd` processes, from /proc; other users of the store land in it too)
and this process's CPU, both per MiB read. Parallel ranges win only if the wall time falls
by more than the noise while the store's CPU per MiB does not rise.

    set -a; . /tmp/ceph-rgw/s3.env; set +a
    .venv/bin/python benchmarks/s3_ranges.py --samples 8
"""

from __future__ import annotations

import argparse
import os
import statistics
import threading
import time
import uuid
from collections.abc import Callable

import boto3

MiB = 1024 * 1024
STORE_PROCESSES = {"radosgw", "ceph-osd"}


def store_cpu_seconds() -> float:
    """User + system CPU of every radosgw and ceph-osd process on this machine."""
    ticks = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as file:
                stat = file.read()
        except OSError:
            continue  # ended meanwhile
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        if name in STORE_PROCESSES:
            fields = stat[stat.rindex(")") + 2 :].split()
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=40, help="the object's size")
    parser.add_argument("--samples", type=int, default=8, help="rounds (medians over them)")
    parser.add_argument("--reads", type=int, default=3, help="reads per way and round")
    arguments = parser.parse_args()
    client = boto3.client(
        "s3",
        endpoint_url=os.environ["S3_ENDPOINT_URL"],
        region_name=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
    )
    bucket = os.environ.get("S3_BUCKET", "registry")
    key = f"benchmarks/s3-ranges/{uuid.uuid4().hex}"
    size = arguments.mib * MiB
    client.put_object(Bucket=bucket, Key=key, Body=os.urandom(size))

    def read_range(start: int, end: int) -> None:
        body = client.get_object(Bucket=bucket, Key=key, Range=f"bytes={start}-{end - 1}")
        stream = body["Body"]
        while stream.read(MiB):
            pass

    def in_ranges(count: int) -> Callable[[], None]:
        def read() -> None:
            step = -(-size // count)
            threads = [
                threading.Thread(target=read_range, args=(start, min(start + step, size)))
                for start in range(0, size, step)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()

        return read

    ways: dict[str, Callable[[], None]] = {
        "one GetObject": lambda: read_range(0, size),
        "2 ranges at once": in_ranges(2),
        "4 ranges at once": in_ranges(4),
    }
    samples: dict[str, list[tuple[float, float, float]]] = {name: [] for name in ways}
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    try:
        for sample in range(arguments.samples):
            names = list(ways) if sample % 2 == 0 else list(ways)[::-1]
            for name in names:
                store, own = store_cpu_seconds(), time.process_time()
                started = time.perf_counter()
                for _ in range(arguments.reads):
                    ways[name]()
                wall = (time.perf_counter() - started) / arguments.reads
                read_mib = arguments.reads * arguments.mib
                samples[name].append(
                    (
                        wall * 1000,
                        (store_cpu_seconds() - store) * 1000 / read_mib,
                        (time.process_time() - own) * 1000 / read_mib,
                    )
                )
    finally:
        client.delete_object(Bucket=bucket, Key=key)
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    print(
        f"| {arguments.mib} MiB object, median of {arguments.samples} | wall ms per read |"
        " store CPU ms/MiB | client CPU ms/MiB |"
    )
    print("|---|---:|---:|---:|")
    for name, values in samples.items():
        wall, store, own = (statistics.median(value[i] for value in values) for i in range(3))
        print(f"| {name} | {wall:.1f} | {store:.2f} | {own:.2f} |")


if __name__ == "__main__":
    main()
