"""Socket settings for large pulls, A/B (issues 13 and 15; docs/performance.md, "Pull socket
buffers (session 9)").

Several cangku servers from this tree, each with its own experiment settings (environment
variables read by `benchmarks/pull_buffers_patch/sitecustomize.py`; a variant without any is
the tree as it is), serve one 40 MiB blob; then `--rounds` rounds, the variants' order
alternating by round, each variant timed in turn:

- `floor`: filesystem storage, one "pull" is five GETs of the blob three at a time (as a warm
  pull makes them), proxy_benchmark's `http_get` client. Printed per variant: the median wall
  time of a pull (ms, with its interquartile range) and the server's mean CPU per pull (ms,
  user + system from /proc; 10 ms ticks, hence the mean over many pulls).
- `s3`: S3 storage on the Ceph RGW of `/tmp/ceph-rgw/s3.env`, one GET at a time,
  `--per-round` GETs per round; a variant named `ref...` is the reference registry with its
  `s3` driver on the same bucket. Printed per variant, medians over the rounds: wall ms per
  GET, the server's CPU and the store's (radosgw, ceph-osd) per MiB.

    .venv/bin/python benchmarks/pull_buffers.py floor --rounds 60 \\
        auto= snd1M=PULLBUF_SNDBUF=1048576 auto2=
    .venv/bin/python benchmarks/pull_buffers.py s3 --rounds 8 --per-round 4 \\
        now= ref= rcv1M=PULLBUF_RCVBUF=1048576 now2=
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import boto3
import httpx
from proxy_benchmark import answers_v2, http_get
from s3_ranges import store_cpu_seconds

HERE = Path(__file__).resolve().parent
CANGKU = str(Path(sys.executable).with_name("cangku"))
REFERENCE = "/usr/bin/docker-registry"
MiB = 1024 * 1024
BLOB_MIB = 40


def process_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(fields[index]) for index in (11, 12, 13, 14)) / os.sysconf("SC_CLK_TCK")


def parse_variant(text: str) -> tuple[str, dict[str, str]]:
    """`name=VAR=value,VAR=value` (or `name=`): a variant's name and its settings."""
    name, _, settings = text.partition("=")
    pairs = (item.split("=", 1) for item in settings.split(",") if item)
    return name, {key: value for key, value in pairs}


def s3_settings() -> dict[str, str]:
    path = os.environ.get("CANGKU_TEST_S3", "/tmp/ceph-rgw/s3.env")
    lines = Path(path).read_text().splitlines()
    return dict(line.strip().split("=", 1) for line in lines if "=" in line)


def configure(
    name: str, data: Path, port: int, store: dict[str, str] | None, prefix: str
) -> list[str]:
    """The command line of the variant's server; writes its configuration under `data`."""
    if store is None:
        return [CANGKU, "serve", "--open", "--listen", f"127.0.0.1:{port}", "--data", str(data)]
    if name.startswith("ref"):
        config = data / "config.yml"
        config.write_text(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  s3:\n"
            f"    accesskey: {store['AWS_ACCESS_KEY_ID']}\n"
            f"    secretkey: {store['AWS_SECRET_ACCESS_KEY']}\n"
            "    region: us-east-1\n"
            f"    regionendpoint: {store['S3_ENDPOINT_URL']}\n"
            f"    bucket: {store['S3_BUCKET']}\n"
            f"    rootdirectory: /{prefix}{name}\n"
            "    secure: false\n    v4auth: true\n"
            "  cache:\n    blobdescriptor: inmemory\n"
            "  redirect:\n    disable: true\n"
            f"http:\n  addr: 127.0.0.1:{port}\n"
        )
        return [REFERENCE, "serve", str(config)]
    config = data / "cangku.yaml"
    config.write_text(
        f"data: {data}\nstorage:\n  driver: s3\n  s3:\n"
        f"    bucket: {store['S3_BUCKET']}\n"
        f"    prefix: {prefix}{name}/\n"
        f"    endpoint: {store['S3_ENDPOINT_URL']}\n"
        "    region: us-east-1\n    path_style: true\n"
        f"    access_key_id: {store['AWS_ACCESS_KEY_ID']}\n"
        f"    secret_access_key: {store['AWS_SECRET_ACCESS_KEY']}\n"
        "    redirect: false\n"
    )
    return [CANGKU, "serve", "--open", "--listen", f"127.0.0.1:{port}", "--config", str(config)]


def start(argv: list[str], settings: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    # Not the CA bundle: Distribution's s3 driver refuses AWS_CA_BUNDLE with its transport.
    skipped = ("CANGKU_", "PULLBUF_", "AWS_CA_BUNDLE")
    env = {k: v for k, v in os.environ.items() if not k.startswith(skipped)}
    env.update(settings)
    env["PYTHONPATH"] = str(HERE / "pull_buffers_patch")
    with log.open("ab") as out:
        return subprocess.Popen(
            argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def push(url: str, blob: bytes, digest: str) -> None:
    """POST then PUT (Distribution 2.8 takes no body on the POST)."""
    answers_v2(url)  # (If it never does, the POST below says so.)
    answer = httpx.post(f"{url}/v2/pullbuf/blobs/uploads/", timeout=60)
    location = answer.headers["location"]
    location = location if location.startswith("http") else url + location
    separator = "&" if "?" in location else "?"
    answer = httpx.put(f"{location}{separator}digest={digest}", content=blob, timeout=120)
    if answer.status_code != 201:
        raise RuntimeError(f"{url}: push answered {answer.status_code}: {answer.text}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["floor", "s3"])
    parser.add_argument("variants", nargs="+", help="name=VAR=value,... (name= for the tree)")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--per-round", type=int, default=4, help="s3: GETs per variant and round")
    arguments = parser.parse_args()
    variants = dict(parse_variant(text) for text in arguments.variants)
    store = s3_settings() if arguments.mode == "s3" else None
    prefix = f"benchmarks/pull-buffers-{uuid.uuid4().hex[:8]}/"
    blob = os.urandom(BLOB_MIB * MiB)
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    url_of = f"/v2/pullbuf/blobs/{digest}"
    processes: dict[str, tuple[subprocess.Popen[bytes], str]] = {}
    workdir = Path(tempfile.mkdtemp(prefix="pull-buffers-"))
    try:
        for name, settings in variants.items():
            data = workdir / name
            data.mkdir()
            port = _free_port()
            argv = configure(name, data, port, store, prefix)
            processes[name] = (start(argv, settings, data / "log"), f"http://127.0.0.1:{port}")
            push(processes[name][1], blob, digest)
        if arguments.mode == "floor":
            floor(processes, url_of, arguments.rounds)
        else:
            s3(processes, url_of, arguments.rounds, arguments.per_round)
    finally:
        for process, _ in processes.values():
            process.terminate()
        for process, _ in processes.values():
            process.wait(10)
        if store is not None:
            _clean(store, prefix)


def floor(
    processes: dict[str, tuple[subprocess.Popen[bytes], str]], path: str, rounds: int
) -> None:
    local = threading.local()
    pool = ThreadPoolExecutor(3)

    def get(url: str) -> None:
        if not hasattr(local, "buffer"):  # one per thread: http_get reads into it
            local.buffer = bytearray(MiB)
        status, length, _ = http_get(url, local.buffer)
        if status != 200 or length != BLOB_MIB * MiB:
            raise RuntimeError(f"{url}: {status}, {length} bytes")

    def pull(url: str) -> None:
        list(pool.map(get, [url + path] * 5))

    results: dict[str, tuple[list[float], list[float]]] = {n: ([], []) for n in processes}
    for _, url in processes.values():
        pull(url)  # warm
    for round_ in range(rounds):
        names = list(processes) if round_ % 2 == 0 else list(processes)[::-1]
        for name in names:
            process, url = processes[name]
            cpu, started = process_cpu(process.pid), time.perf_counter()
            pull(url)
            results[name][0].append((time.perf_counter() - started) * 1000)
            results[name][1].append((process_cpu(process.pid) - cpu) * 1000)
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    print("| variant | pull ms, median (IQR) | server CPU ms per pull, mean |")
    print("|---|---:|---:|")
    for name, (walls, cpus) in results.items():
        low, _, high = statistics.quantiles(walls, n=4)
        wall = statistics.median(walls)
        print(f"| {name} | {wall:.1f} ({low:.1f}-{high:.1f}) | {statistics.mean(cpus):.1f} |")


def s3(
    processes: dict[str, tuple[subprocess.Popen[bytes], str]], path: str, rounds: int, per: int
) -> None:
    buffer = bytearray(MiB)
    results: dict[str, list[tuple[float, float, float]]] = {n: [] for n in processes}
    for _, url in processes.values():
        http_get(url + path, buffer)  # warm
    for round_ in range(rounds):
        names = list(processes) if round_ % 2 == 0 else list(processes)[::-1]
        for name in names:
            process, url = processes[name]
            cpu, store, started = process_cpu(process.pid), store_cpu_seconds(), time.perf_counter()
            for _ in range(per):
                status, length, _ = http_get(url + path, buffer)
                if status != 200 or length != BLOB_MIB * MiB:
                    raise RuntimeError(f"{url}: {status}, {length} bytes")
            wall = (time.perf_counter() - started) * 1000 / per
            mib = BLOB_MIB * per
            server_cpu = (process_cpu(process.pid) - cpu) * 1000 / mib
            results[name].append((wall, server_cpu, (store_cpu_seconds() - store) * 1000 / mib))
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    print("| variant | ms per 40 MiB GET | server CPU ms/MiB | store CPU ms/MiB | rounds, ms |")
    print("|---|---:|---:|---:|---|")
    for name, values in results.items():
        wall, server, store = (statistics.median(v[i] for v in values) for i in range(3))
        each = ", ".join(f"{v[0]:.0f}" for v in values)
        print(f"| {name} | {wall:.1f} | {server:.2f} | {store:.2f} | {each} |")


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _clean(store: dict[str, str], prefix: str) -> None:
    client = boto3.client(
        "s3",
        endpoint_url=store["S3_ENDPOINT_URL"],
        region_name="us-east-1",
        aws_access_key_id=store["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=store["AWS_SECRET_ACCESS_KEY"],
    )
    bucket = store["S3_BUCKET"]
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys = [{"Key": entry["Key"]} for entry in page.get("Contents", [])]
        if keys:
            client.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})


if __name__ == "__main__":
    main()
