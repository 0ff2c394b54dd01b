"""Benchmark the scale-out configuration (issue 15): cangku on PostgreSQL + S3 beside the
reference registry (Distribution 2.8.2) with its `s3` driver on the same bucket.

Run from the repository root, with PostgreSQL and the Ceph RGW of tests/s3.py up:

    .venv/bin/python benchmarks/scale_out_benchmark.py
    .venv/bin/python benchmarks/scale_out_benchmark.py --rounds 1 --seconds 5   # smoke run

What it does, on loopback only:

- creates a fresh PostgreSQL database (`--postgres`, a role that may create databases) and
  gives each registry its own key prefix in the bucket of `--s3-env` (start-ceph-rgw.sh's
  s3.env); redirects off for both, so every blob byte goes through the registry;
- **push / pull**: `--blobs` blobs of `--blob-mib` MiB each, pushed monolithically
  (POST + PUT ?digest=, which both registries take), then each pulled `--pull-repeats`
  times, one GET at a time, with curl (`--pull-client socket`: plain sockets, cheaper);
- **manifest GETs**: wrk for `--seconds` with `--connections` connections on one tag;
- **replicas**: cangku's manifest GETs from one replica to two, each `cangku serve` pinned to
  its own core with `taskset` (wrk and PostgreSQL run unpinned beside them);

rounds interleaved (the order alternates), so both registries see the same machine state.
Alongside each throughput it reports the servers' CPU time per unit of work (from
/proc/PID/stat), which a busy machine disturbs much less than wall-clock rates. Prints a
markdown table on stdout; stops what it started and removes the database, the bucket
prefixes and the temporary files at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import boto3
import psycopg
from botocore.config import Config

sys.path.insert(0, str(Path(__file__).resolve().parent))
import proxy_benchmark
import registry_benchmark as rb

MiB = rb.MiB
TICKS = os.sysconf("SC_CLK_TCK")
REPOSITORY = "bench/app"
# The object store's processes whose CPU the pull row reports beside the registry's: how
# hard each registry's way of reading blobs makes the store work (requests, ranges, sizes).
STORE_PROCESSES = {"radosgw", "ceph-osd"}


def log(message: str) -> None:
    print(f"[scale-out] {message}", file=sys.stderr, flush=True)


@dataclass
class Store:
    """The S3 store from s3.env and a fresh PostgreSQL database."""

    endpoint: str
    bucket: str
    region: str
    access_key: str
    secret_key: str
    database_url: str
    run: str = field(default_factory=lambda: uuid.uuid4().hex[:10])

    @property
    def prefix(self) -> str:
        return f"scale-bench-{self.run}/"


def read_s3_env(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        key, _, value = line.partition("=")
        values[key.strip()] = value.strip()
    return values


@contextlib.contextmanager
def stores(s3_env: Path, postgres: str) -> Iterator[Store]:
    values = read_s3_env(s3_env)
    conninfo = postgres.replace("postgresql+psycopg://", "postgresql://")
    name = f"cangku_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(conninfo, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    base, _, _ = postgres.rpartition("/")
    store = Store(
        endpoint=values["S3_ENDPOINT_URL"],
        bucket=values.get("S3_BUCKET", "registry"),
        region=values.get("AWS_DEFAULT_REGION", "us-east-1"),
        access_key=values["AWS_ACCESS_KEY_ID"],
        secret_key=values["AWS_SECRET_ACCESS_KEY"],
        database_url=f"{base}/{name}",
    )
    try:
        yield store
    finally:
        with contextlib.suppress(Exception), psycopg.connect(conninfo, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
        remove_prefix(store)


def remove_prefix(store: Store) -> None:
    client = boto3.client(
        "s3",
        endpoint_url=store.endpoint,
        region_name=store.region,
        aws_access_key_id=store.access_key,
        aws_secret_access_key=store.secret_key,
        config=Config(s3={"addressing_style": "path"}),
    )
    for page in client.get_paginator("list_multipart_uploads").paginate(
        Bucket=store.bucket, Prefix=store.prefix
    ):
        for upload in page.get("Uploads", []):
            client.abort_multipart_upload(
                Bucket=store.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
            )
    for page in client.get_paginator("list_objects_v2").paginate(
        Bucket=store.bucket, Prefix=store.prefix
    ):
        keys = [{"Key": entry["Key"]} for entry in page.get("Contents", [])]
        if keys:
            client.delete_objects(Bucket=store.bucket, Delete={"Objects": keys, "Quiet": True})


def cangku_config(path: Path, store: Store, data: Path) -> None:
    """Write cangku's configuration and migrate the fresh database (on PostgreSQL `serve`
    refuses a database without its schema; docs/scale-out.md: `cangku db upgrade` once)."""
    write_cangku_config(path, store, data)
    program = str(Path(sys.executable).with_name("cangku"))
    subprocess.run(
        [program, "db", "upgrade", "--config", str(path)], check=True, capture_output=True
    )


def write_cangku_config(path: Path, store: Store, data: Path) -> None:
    path.write_text(
        f"data: {data}\n"
        f"database_url: {store.database_url}\n"
        "storage:\n"
        "  driver: s3\n"
        "  s3:\n"
        f"    bucket: {store.bucket}\n"
        f"    prefix: {store.prefix}cangku/\n"
        f"    endpoint: {store.endpoint}\n"
        f"    region: {store.region}\n"
        "    path_style: true\n"
        f"    access_key_id: {store.access_key}\n"
        f"    secret_access_key: {store.secret_key}\n"
        "    redirect: false\n"
    )


def reference_config(path: Path, store: Store, port: int) -> None:
    # Distribution 2.8's s3 driver uses path-style URLs when regionendpoint is set.
    path.write_text(
        "version: 0.1\n"
        "log:\n"
        "  level: warn\n"
        "storage:\n"
        "  s3:\n"
        f"    accesskey: {store.access_key}\n"
        f"    secretkey: {store.secret_key}\n"
        f"    region: {store.region}\n"
        f"    regionendpoint: {store.endpoint}\n"
        f"    bucket: {store.bucket}\n"
        f"    rootdirectory: /{store.prefix}reference\n"
        f"    secure: {'false' if store.endpoint.startswith('http://') else 'true'}\n"
        "    v4auth: true\n"
        # As Debian's and the image's default config.yml: blob descriptors cached in memory.
        "  cache:\n"
        "    blobdescriptor: inmemory\n"
        "  redirect:\n"
        "    disable: true\n"
        "  delete:\n"
        "    enabled: true\n"
        "http:\n"
        f"  addr: 127.0.0.1:{port}\n"
    )


def cangku_registry(name: str, config: Path, workdir: Path, core: int | None = None) -> rb.Registry:
    port = rb.free_loopback_port()
    program = str(Path(sys.executable).with_name("cangku"))
    argv = [program, "serve", "--open", "--listen", f"127.0.0.1:{port}", "--config", str(config)]
    if core is not None:
        argv = ["taskset", "-c", str(core), *argv]
    directory = workdir / name
    directory.mkdir()
    return rb.Registry(name, argv, port, directory)


def cpu_seconds(registry: rb.Registry) -> float:
    """User + system CPU of the server and its descendants so far."""
    total = 0
    for pid in registry.pids():
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / TICKS


def store_pids() -> list[int]:
    """The Ceph RGW's processes (radosgw, ceph-osd) on this machine, found by name."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (entry / "comm").read_text().strip() in STORE_PROCESSES:
                    pids.append(int(entry.name))
    return pids


def store_cpu_seconds(pids: list[int]) -> float:
    """User + system CPU of the object store's processes so far (all their threads)."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
            total += int(fields[11]) + int(fields[12])
    return total / TICKS


@dataclass
class Sample:
    rate: float  # MiB/s or requests/s
    cpu: float  # server CPU milliseconds per MiB (push, pull) or per request
    # The object store's (Ceph RGW + OSD) CPU milliseconds per MiB pulled; NaN where not read.
    store_cpu: float = float("nan")


@dataclass
class Results:
    samples: dict[tuple[str, str], list[Sample]] = field(default_factory=dict)

    def add(self, row: str, registry: str, sample: Sample) -> None:
        self.samples.setdefault((row, registry), []).append(sample)
        store = (
            "" if sample.store_cpu != sample.store_cpu else f"  store cpu {sample.store_cpu:.3f}"
        )
        log(f"{row:<22} {registry:<12} {sample.rate:10.1f}  cpu {sample.cpu:.3f}{store}")

    def median(self, row: str, registry: str) -> Sample | None:
        samples = self.samples.get((row, registry))
        if not samples:
            return None
        return Sample(
            statistics.median(s.rate for s in samples),
            statistics.median(s.cpu for s in samples),
            statistics.median(s.store_cpu for s in samples),
        )

    def ratios(self, row: str, numerator: str, denominator: str) -> list[float]:
        """numerator / denominator round by round: each pair ran minutes apart at most, so
        their ratio suffers less from the machine's load changing than the medians' ratio."""
        tops = self.samples.get((row, numerator), [])
        bottoms = self.samples.get((row, denominator), [])
        return [top.rate / bottom.rate for top, bottom in zip(tops, bottoms, strict=False)]

    def values(self, row: str, registry: str) -> str:
        return ", ".join(f"{s.rate:,.0f}" for s in self.samples.get((row, registry), []))


def measured(
    registries: list[rb.Registry], work: Callable[[], float], per: float
) -> tuple[float, float]:
    """(work's result, the servers' CPU seconds spent during it divided by `per`)."""
    before = sum(cpu_seconds(registry) for registry in registries)
    result = work()
    spent = sum(cpu_seconds(registry) for registry in registries) - before
    return result, spent / per


def socket_pull(url: str, size: int) -> float:
    """Seconds for one GET of url read with plain sockets (proxy_benchmark.http_get: a
    reused 1 MiB recv_into buffer, ~0.18 ms of CPU per MiB against curl's ~0.5)."""
    started = time.perf_counter()
    status, length, _ = proxy_benchmark.http_get(url, bytearray(MiB))
    if status != 200 or length != size:
        raise RuntimeError(f"GET {url}: {status}, {length} bytes")
    return time.perf_counter() - started


PULL_CLIENTS: dict[str, Callable[[str, int], float]] = {
    "curl": lambda url, size: rb.curl_pull(url, 1, size),
    "socket": socket_pull,
}
PULL_CLIENT = "curl"  # --pull-client
PULL_REPEATS = 3  # --pull-repeats: each pushed blob is pulled this many times per round


def push_and_pull(registry: rb.Registry, blob: rb.BlobFile, count: int, results: Results) -> None:
    pushed: list[tuple[str, int]] = []
    with rb.new_client() as client:

        def push() -> float:
            started = time.perf_counter()
            for _ in range(count):
                pushed.append(rb.push_blob_monolithic(client, registry.base, REPOSITORY, blob))
            return time.perf_counter() - started

        seconds, cpu = measured([registry], push, count * blob.size / MiB / 1000)
        mib = sum(size for _, size in pushed) / MiB
        results.add("push", registry.name, Sample(mib / seconds, cpu))

    def pull() -> float:
        return sum(
            PULL_CLIENTS[PULL_CLIENT](f"{registry.base}/v2/{REPOSITORY}/blobs/{digest}", size)
            for digest, size in pushed * PULL_REPEATS
        )

    mib *= PULL_REPEATS
    ceph = store_pids()
    store_before = store_cpu_seconds(ceph)
    seconds, cpu = measured([registry], pull, mib / 1000)
    store_cpu = (store_cpu_seconds(ceph) - store_before) / (mib / 1000)
    results.add("pull", registry.name, Sample(mib / seconds, cpu, store_cpu))


def manifest_gets(
    registries: list[rb.Registry],
    row: str,
    label: str,
    connections: int,
    seconds: int,
    workdir: Path,
    results: Results,
) -> None:
    """wrk on every registry at once (connections split evenly): the summed rate, and the
    servers' CPU milliseconds per request."""
    script = rb.wrk_fetch_script("GET")
    share = max(1, connections // len(registries))
    before = sum(cpu_seconds(registry) for registry in registries)
    with rb.ThreadPoolExecutor(len(registries)) as pool:
        futures = [
            pool.submit(
                rb.run_wrk,
                script,
                f"{registry.base}/v2/{REPOSITORY}/manifests/latest",
                share,
                seconds,
                workdir,
            )
            for registry in registries
        ]
        outcomes = [future.result() for future in futures]
    spent = sum(cpu_seconds(registry) for registry in registries) - before
    errors = sum(outcome.errors for outcome in outcomes)
    if errors:
        raise RuntimeError(f"{row}: {errors} wrk errors")
    requests = sum(outcome.requests for outcome in outcomes)
    rate = sum(outcome.requests_per_second for outcome in outcomes)
    results.add(row, label, Sample(rate, spent / max(requests, 1) * 1000))


def small_image(registry: rb.Registry) -> None:
    config, layers = rb.small_image("scale-out")
    with rb.new_client() as client:
        rb.push_image(client, registry.base, REPOSITORY, "latest", config, layers)


def compare(arguments: argparse.Namespace, store: Store, workdir: Path, results: Results) -> None:
    """cangku and the reference, unpinned, rounds interleaved."""
    config = workdir / "cangku.yaml"
    cangku_config(config, store, workdir / "cangku-data")
    cangku = cangku_registry("cangku", config, workdir)
    reference_dir = workdir / "reference"
    reference_dir.mkdir()
    port = rb.free_loopback_port()
    reference_config(reference_dir / "config.yml", store, port)
    reference = rb.Registry(
        "reference",
        # aws-sdk-go refuses AWS_CA_BUNDLE with the registry's own HTTP transport (it panics:
        # "LoadCustomCABundleError"); the endpoint is loopback anyway. `env` execs: same PID.
        [
            "env",
            "-u",
            "AWS_CA_BUNDLE",
            rb.REFERENCE_BINARY,
            "serve",
            str(reference_dir / "config.yml"),
        ],
        port,
        reference_dir,
    )
    blob = rb.BlobFile.create(workdir / "blob.bin", arguments.blob_mib * MiB)
    registries = [reference, cangku]
    try:
        for registry in registries:
            registry.start()
            small_image(registry)
        for number in range(arguments.rounds):
            order = registries if number % 2 == 0 else registries[::-1]
            for registry in order:
                push_and_pull(registry, blob, arguments.blobs, results)
            for registry in order:
                manifest_gets(
                    [registry],
                    "manifest GET",
                    registry.name,
                    arguments.connections,
                    arguments.seconds,
                    workdir,
                    results,
                )
    finally:
        for registry in registries:
            registry.stop()


def replicas(arguments: argparse.Namespace, store: Store, workdir: Path, results: Results) -> None:
    """cangku's manifest GETs from one replica to two, each pinned to its own core."""
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        log("one core only: no replica rows")
        return
    config = workdir / "replica.yaml"
    cangku_config(config, store, workdir / "replica-data")
    pinned = [
        cangku_registry(f"replica-{index}", config, workdir, core)
        for index, core in enumerate(cores[:2])
    ]
    try:
        for registry in pinned:
            registry.start()
        small_image(pinned[0])  # one database: the other replica serves it too
        for number in range(arguments.rounds):
            layouts = [pinned[:1], pinned] if number % 2 == 0 else [pinned, pinned[:1]]
            for layout in layouts:
                manifest_gets(
                    layout,
                    "manifest GET, replicas",
                    f"{len(layout)} replica" + ("s" if len(layout) > 1 else ""),
                    arguments.connections,
                    arguments.seconds,
                    workdir,
                    results,
                )
    finally:
        for registry in pinned:
            registry.stop()


def render(results: Results, arguments: argparse.Namespace, load: tuple[str, str]) -> str:
    lines = [
        f"{arguments.rounds} rounds, interleaved; medians (each round's value in brackets). "
        f"Push/pull: {arguments.blobs} x {arguments.blob_mib} MiB, one at a time (pulled "
        f"{arguments.pull_repeats} times, {arguments.pull_client}); manifest "
        f"GETs: wrk, {arguments.connections} connections, {arguments.seconds} s. CPU: the "
        "servers' user + system time (not PostgreSQL's or Ceph's).",
        f"Load average before: {load[0]}; after: {load[1]}.",
    ]
    if results.median("push", "cangku") is not None:
        lines += [
            "",
            "| row | reference (s3) | cangku (PostgreSQL + S3) | cangku / reference "
            "| per round | CPU reference | CPU cangku |",
            "|---|---|---|---|---|---|---|",
        ]
    for row, unit, cpu_unit in (
        ("push", "MiB/s", "ms/MiB"),
        ("pull", "MiB/s", "ms/MiB"),
        ("manifest GET", "req/s", "ms/req"),
    ):
        reference, cangku = results.median(row, "reference"), results.median(row, "cangku")
        if reference is None or cangku is None:
            continue
        lines.append(
            f"| {row} ({unit}) | {reference.rate:,.1f} [{results.values(row, 'reference')}] "
            f"| {cangku.rate:,.1f} [{results.values(row, 'cangku')}] "
            f"| {cangku.rate / reference.rate:.2f}x "
            f"| {', '.join(f'{r:.2f}' for r in results.ratios(row, 'cangku', 'reference'))} "
            f"| {reference.cpu:.2f} {cpu_unit} | {cangku.cpu:.2f} {cpu_unit} |"
        )
    one = results.median("manifest GET, replicas", "1 replica")
    two = results.median("manifest GET, replicas", "2 replicas")
    if one is not None and two is not None:
        lines += [
            "",
            "| cangku manifest GETs, each replica pinned to its own core | req/s | CPU ms/req |",
            "|---|---|---|",
            f"| 1 replica | {one.rate:,.0f} "
            f"[{results.values('manifest GET, replicas', '1 replica')}] | {one.cpu:.3f} |",
            f"| 2 replicas | {two.rate:,.0f} "
            f"[{results.values('manifest GET, replicas', '2 replicas')}] | {two.cpu:.3f} |",
            f"| 2 / 1 | {two.rate / one.rate:.2f}x (per round: "
            + ", ".join(
                f"{r:.2f}"
                for r in results.ratios("manifest GET, replicas", "2 replicas", "1 replica")
            )
            + ") | |",
        ]
    reference, cangku = results.median("pull", "reference"), results.median("pull", "cangku")
    if reference is not None and cangku is not None:
        per_round = ", ".join(
            f"{r.store_cpu:.2f} / {c.store_cpu:.2f}"
            for r, c in zip(
                results.samples[("pull", "reference")],
                results.samples[("pull", "cangku")],
                strict=False,
            )
        )
        lines += [
            "",
            "Ceph's CPU (radosgw + ceph-osd, ms per MiB pulled), reference / cangku: "
            f"{reference.store_cpu:.2f} / {cangku.store_cpu:.2f} (per round: {per_round}).",
        ]
    return "\n".join(lines)


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--blobs", type=int, default=5, help="blobs pushed and pulled per round")
    parser.add_argument("--blob-mib", type=int, default=40, help="size of each blob (MiB)")
    parser.add_argument("--seconds", type=int, default=10, help="wrk's duration per row")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument(
        "--s3-env",
        type=Path,
        default=Path(os.environ.get("CANGKU_TEST_S3", "/tmp/ceph-rgw/s3.env")),
        help="start-ceph-rgw.sh's s3.env (default: $CANGKU_TEST_S3 or /tmp/ceph-rgw/s3.env)",
    )
    parser.add_argument(
        "--postgres",
        default=os.environ.get(
            "CANGKU_TEST_POSTGRES", "postgresql+psycopg://cangku:cangku@127.0.0.1:5432/postgres"
        ),
        help="URL of a role that may create databases (default: $CANGKU_TEST_POSTGRES)",
    )
    parser.add_argument(
        "--pull-client",
        choices=sorted(PULL_CLIENTS),
        default="curl",
        help="the pull row's client (socket: cheaper than curl, which shares the 2 cores)",
    )
    parser.add_argument(
        "--pull-repeats",
        type=int,
        default=3,
        help="pulls of each pushed blob per round (CPU is counted in 10 ms ticks: more MiB, "
        "finer ms/MiB)",
    )
    parser.add_argument("--skip-replicas", action="store_true")
    parser.add_argument("--skip-compare", action="store_true")
    return parser.parse_args()


def main() -> int:
    global PULL_CLIENT, PULL_REPEATS
    arguments = parse_arguments()
    PULL_CLIENT, PULL_REPEATS = arguments.pull_client, arguments.pull_repeats
    for program in ("wrk", "curl", "taskset", rb.REFERENCE_BINARY):
        if shutil.which(program) is None:
            log(f"{program} is missing")
            return 2
    results = Results()
    load_before = load_average()
    with (
        tempfile.TemporaryDirectory(prefix="cangku-scale-bench-") as directory,
        stores(arguments.s3_env, arguments.postgres) as store,
    ):
        workdir = Path(directory)
        if not arguments.skip_compare:
            compare(arguments, store, workdir, results)
        if not arguments.skip_replicas:
            replicas(arguments, store, workdir, results)
    print(render(results, arguments, (load_before, load_average())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
