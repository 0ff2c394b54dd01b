"""Benchmark cangku against the reference registry (CNCF Distribution 2.8.2) in one run.

Run from the repository root:

    .venv/bin/python benchmarks/registry_benchmark.py            # full run (~10 minutes)
    .venv/bin/python benchmarks/registry_benchmark.py --quick    # smoke run (~1-2 minutes)
    .venv/bin/python benchmarks/registry_benchmark.py --only mono,manifest-get,docker

The script starts both registries itself on free loopback ports, each with a fresh temporary
data directory, runs the same workload against each (interleaved row by row, so both see the
same machine state), prints a markdown table to stdout (progress goes to stderr) and stops
every process it started and removes its temporary files at the end, also on Ctrl-C.

Every number is a throughput, so higher is better; the docker rows are times in seconds and
their ratio is reference/cangku so that higher still means cangku is faster.

`--cangku-cmd TEMPLATE` (or env CANGKU_BENCH_CMD) replaces the cangku command line;
`{port}` and `{data}` are substituted. The value `reference` starts a second copy of the
reference registry in cangku's place, which is how the script itself is validated.

`--floor` adds a third contender to the blob push rows, benchmarks/floor_sink.py: what a
minimal Python pipeline (receive, sha256, 32 KiB writes, rename) spends per MB on this machine.
`--full-page-cache` measures with memory full of page cache (see PageCacheBallast).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.client
import itertools
import json
import multiprocessing
import multiprocessing.synchronize
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import traceback
import urllib.parse
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

MiB = 1 << 20
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CANGKU_CMD = (
    f"{REPO_ROOT}/.venv/bin/cangku serve --listen 127.0.0.1:{{port}} --data {{data}} --open"
)
REFERENCE_BINARY = "/usr/bin/docker-registry"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
HTTP_TIMEOUT = httpx.Timeout(300.0, connect=10.0)
SUBPROCESS_TIMEOUT = 900.0  # upper bound for any single docker / wrk invocation


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Settings


@dataclass(frozen=True)
class Settings:
    quick: bool
    small_blob: int  # bytes
    big_blob: int
    patch_chunk: int
    # Samples per blob push and pull row: 5 in a full run (3 before session 18). A 64 MiB
    # sample's system time varies with where its pages come from: 0.60-2.83 ms/MB over
    # cangku's samples in one state of memory (docs/performance.md, "Sessions 16 and 17");
    # a median of 3 followed it.
    blob_repetitions: int
    wrk_seconds: int
    load_repetitions: int  # for the time-bounded rows (manifests, listings)
    listing_seconds: float
    tag_count: int
    version_count: int  # versions in the big repository of the versions rows
    version_samples: int  # timed PUTs per repository there
    catalog_repos: int
    image_clients: int
    images_per_client: int
    layers_per_image: int
    layer_size: int
    docker_layers: int
    docker_layer_size: int
    # docker push/pull samples per registry: the docker rows' wall times carry dockerd's gzip
    # and the VM's page-cache cost on the same two cores, and one dear sample of three moves
    # the median (docs/performance.md, "Cold memory").
    docker_repetitions: int

    @staticmethod
    def build(quick: bool) -> Settings:
        if quick:
            return Settings(
                quick=True,
                small_blob=16 * MiB,
                big_blob=64 * MiB,
                patch_chunk=8 * MiB,
                blob_repetitions=1,
                wrk_seconds=1,
                load_repetitions=1,
                listing_seconds=1.0,
                tag_count=250,
                version_count=1000,
                version_samples=100,
                catalog_repos=60,
                image_clients=8,
                images_per_client=2,
                layers_per_image=10,
                layer_size=MiB,
                docker_layers=5,
                docker_layer_size=4 * 1000 * 1000,
                docker_repetitions=1,
            )
        return Settings(
            quick=False,
            small_blob=64 * MiB,
            big_blob=512 * MiB,
            patch_chunk=8 * MiB,
            blob_repetitions=5,
            wrk_seconds=4,
            load_repetitions=3,
            listing_seconds=4.0,
            tag_count=1000,
            version_count=10_000,
            version_samples=300,
            catalog_repos=200,
            image_clients=8,
            images_per_client=8,
            layers_per_image=10,
            layer_size=MiB,
            docker_layers=5,
            docker_layer_size=40 * 1000 * 1000,
            docker_repetitions=5,
        )


# ---------------------------------------------------------------------------------------------
# Registry processes


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_reference_config(path: Path, data_dir: Path, port: int) -> None:
    path.write_text(
        "version: 0.1\n"
        "log:\n"
        "  level: warn\n"
        "storage:\n"
        "  filesystem:\n"
        f"    rootdirectory: {data_dir}\n"
        "  delete:\n"
        "    enabled: true\n"
        "http:\n"
        f"  addr: 127.0.0.1:{port}\n"
    )


@dataclass
class Registry:
    name: str  # "reference", "cangku" or "floor" (--floor)
    argv: list[str]
    port: int
    workdir: Path
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    prepared: dict[str, Any] = field(default_factory=dict)  # per-registry fixtures

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.log_path = self.workdir / "server.log"
        log_file = self.log_path.open("wb")
        log(f"starting {self.name}: {shlex.join(self.argv)}")
        # Own session: Ctrl-C in the terminal reaches only us; we stop the server by its PID.
        # Request logging off in both: the reference runs at log level warn (below).
        environment = {**os.environ, "CANGKU_LOG_LEVEL": "warning"}
        self.process = subprocess.Popen(
            self.argv,
            env=environment,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log_file.close()
        deadline = time.monotonic() + 60
        with httpx.Client(trust_env=False, timeout=2.0) as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"{self.name} exited early:\n{self.log_tail()}")
                with contextlib.suppress(httpx.HTTPError):
                    status = client.get(f"{self.base}/v2/").status_code
                    if status == 200:
                        log(f"{self.name} ready on {self.base} (pid {self.process.pid})")
                        return
                    if status == 401:
                        raise RuntimeError(
                            f"{self.name} wants authentication; the benchmark needs an open "
                            "registry (pass --cangku-cmd with the server's no-auth option)"
                        )
                time.sleep(0.2)
        raise RuntimeError(f"{self.name} did not answer GET /v2/ in 60 s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def pids(self) -> list[int]:
        """The server PID and its descendants (e.g. worker processes)."""
        if self.process is None or self.process.poll() is not None:
            return []
        found: list[int] = []
        pending = [self.process.pid]
        while pending and len(found) < 1000:
            pid = pending.pop()
            found.append(pid)
            for children in Path(f"/proc/{pid}/task").glob("*/children"):
                with contextlib.suppress(OSError):
                    pending.extend(int(c) for c in children.read_text().split())
        return found

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server and its descendants so far (/proc/PID/stat)."""
        user, system = self.cpu_split()
        return user + system

    def cpu_split(self) -> tuple[float, float]:
        """(user, system) CPU seconds of the server and its descendants so far."""
        user, system, _ = self._stat_totals()
        return user / CLOCK_TICKS, system / CLOCK_TICKS

    def minor_faults(self) -> int:
        """Minor page faults of the server and its descendants so far: each is a page of
        memory the process touched for the first time (or again after reclaim)."""
        return self._stat_totals()[2]

    def _stat_totals(self) -> tuple[int, int, int]:
        """(utime, stime in clock ticks, minflt) summed over the server and its descendants,
        from /proc/PID/stat: fields 14, 15 and 10, counted after the parenthesized command."""
        user = system = faults = 0
        for pid in self.pids():
            with contextlib.suppress(OSError, IndexError, ValueError):
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                user += int(fields[11])
                system += int(fields[12])
                faults += int(fields[7])
        return user, system, faults

    def rss_peak_kib(self) -> tuple[int, int]:
        """(VmHWM of the main process, sum of VmHWM over it and its descendants) in KiB."""
        values: list[int] = []
        for pid in self.pids():
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        values.append(int(line.split()[1]))
        return (values[0] if values else 0), sum(values)

    def stop(self) -> None:
        process = self.process
        if process is None or process.poll() is not None:
            return
        log(f"stopping {self.name} (pid {process.pid})")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)  # the group is the one we created
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)


def make_floor(root: Path) -> Registry:
    """benchmarks/floor_sink.py as a contender on the blob push rows (--floor)."""
    workdir = root / "floor"
    data = workdir / "data"
    data.mkdir(parents=True)
    port = free_loopback_port()
    sink = Path(__file__).resolve().parent / "floor_sink.py"
    argv = [sys.executable, str(sink), "--listen", f"127.0.0.1:{port}", "--data", str(data)]
    return Registry(name="floor", argv=argv, port=port, workdir=workdir)


def make_registries(root: Path, cangku_cmd: str) -> list[Registry]:
    registries: list[Registry] = []
    for name in ("reference", "cangku"):
        workdir = root / name
        data = workdir / "data"
        data.mkdir(parents=True)
        port = free_loopback_port()
        if name == "reference" or cangku_cmd == "reference":
            config = workdir / "config.yml"
            write_reference_config(config, data, port)
            argv = [REFERENCE_BINARY, "serve", str(config)]
        else:
            argv = shlex.split(cangku_cmd.format(port=port, data=data))
        registries.append(Registry(name=name, argv=argv, port=port, workdir=workdir))
    return registries


# ---------------------------------------------------------------------------------------------
# HTTP helpers (httpx, sync)


def new_client() -> httpx.Client:
    return httpx.Client(trust_env=False, timeout=HTTP_TIMEOUT, follow_redirects=False)


def expect(response: httpx.Response, *statuses: int) -> httpx.Response:
    if response.status_code not in statuses:
        body = response.read()[:300].decode(errors="replace")
        raise RuntimeError(
            f"{response.request.method} {response.request.url.path} -> "
            f"{response.status_code} (wanted {statuses}): {body}"
        )
    return response


def location(response: httpx.Response) -> httpx.URL:
    return response.request.url.join(response.headers["Location"])


def with_digest(url: httpx.URL, digest: str) -> httpx.URL:
    return url.copy_merge_params({"digest": digest})


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def push_small_blob(client: httpx.Client, base: str, repo: str, data: bytes) -> str:
    """POST + PUT ?digest= (the reference 2.8 has no single-POST monolithic upload)."""
    digest = sha256_digest(data)
    started = expect(client.post(f"{base}/v2/{repo}/blobs/uploads/"), 202)
    expect(
        client.put(
            with_digest(location(started), digest),
            content=data,
            headers={"Content-Type": "application/octet-stream"},
        ),
        201,
    )
    return digest


def image_manifest(config: bytes, layers: list[bytes]) -> bytes:
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": sha256_digest(config), "size": len(config)},
        "layers": [
            {"mediaType": OCI_LAYER, "digest": sha256_digest(layer), "size": len(layer)}
            for layer in layers
        ],
    }
    return json.dumps(manifest, separators=(",", ":")).encode()


def image_config(layers: list[bytes], label: str) -> bytes:
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Labels": {"bench": label}},
        "rootfs": {"type": "layers", "diff_ids": [sha256_digest(layer) for layer in layers]},
    }
    return json.dumps(config, separators=(",", ":")).encode()


def push_image(
    client: httpx.Client, base: str, repo: str, tag: str, config: bytes, layers: list[bytes]
) -> bytes:
    for blob in [config, *layers]:
        push_small_blob(client, base, repo, blob)
    manifest = image_manifest(config, layers)
    expect(
        client.put(
            f"{base}/v2/{repo}/manifests/{tag}",
            content=manifest,
            headers={"Content-Type": OCI_MANIFEST},
        ),
        201,
    )
    return manifest


def small_image(label: str) -> tuple[bytes, list[bytes]]:
    layers = [os.urandom(2048)]
    return image_config(layers, label), layers


# ---------------------------------------------------------------------------------------------
# Large blobs: generated once to a file, streamed from it, never held whole in memory.


@dataclass
class BlobFile:
    path: Path
    size: int
    sha256_state: Any  # hashlib sha256 object after hashing the file

    @staticmethod
    def create(path: Path, size: int) -> BlobFile:
        hasher = hashlib.sha256()
        with path.open("wb") as out:
            remaining = size
            while remaining > 0:
                chunk = os.urandom(min(8 * MiB, remaining))
                hasher.update(chunk)
                out.write(chunk)
                remaining -= len(chunk)
        return BlobFile(path=path, size=size, sha256_state=hasher)

    def variant(self, suffix: bytes) -> tuple[str, int]:
        """Digest and size of file+suffix: a distinct blob per upload, hashed for free."""
        hasher = self.sha256_state.copy()
        hasher.update(suffix)
        return "sha256:" + hasher.hexdigest(), self.size + len(suffix)

    def stream(self, suffix: bytes, chunk_size: int = MiB) -> Iterator[bytes]:
        with self.path.open("rb") as source:
            while chunk := source.read(chunk_size):
                yield chunk
        yield suffix


def unique_suffix(tag: str) -> bytes:
    return f"|{tag}|{time.time_ns()}|{os.urandom(8).hex()}".encode()


def push_blob_monolithic(
    client: httpx.Client, base: str, repo: str, blob: BlobFile
) -> tuple[str, int]:
    suffix = unique_suffix("mono")
    digest, size = blob.variant(suffix)
    started = expect(client.post(f"{base}/v2/{repo}/blobs/uploads/"), 202)
    expect(
        client.put(
            with_digest(location(started), digest),
            content=blob.stream(suffix),
            headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)},
        ),
        201,
    )
    return digest, size


def push_blob_chunked(
    client: httpx.Client, base: str, repo: str, blob: BlobFile, chunk_size: int
) -> str:
    suffix = unique_suffix("chunked")
    digest, size = blob.variant(suffix)
    upload = location(expect(client.post(f"{base}/v2/{repo}/blobs/uploads/"), 202))
    offset = 0
    with blob.path.open("rb") as source:
        for _ in range(size // max(chunk_size, 1) + 2):  # bounded: one pass over the file
            data = source.read(chunk_size)
            if not data:
                break
            if offset + len(data) >= blob.size:
                data += suffix  # the last chunk carries the distinguishing suffix
            response = client.patch(
                upload,
                content=data,
                headers={
                    "Content-Type": "application/octet-stream",
                    "Content-Range": f"{offset}-{offset + len(data) - 1}",
                },
            )
            upload = location(expect(response, 202))
            offset += len(data)
    if offset != size:
        raise RuntimeError(f"chunked upload sent {offset} bytes, expected {size}")
    expect(client.put(with_digest(upload, digest), content=b""), 201)
    return digest


def curl_pull(url: str, clients: int, expected: int) -> float:
    """Seconds for `clients` concurrent curl GETs of url (body discarded) to all finish.

    curl, not httpx: on loopback httpx's response parsing tops out near 300 MB/s on one core,
    curl near 1 GB/s, so curl keeps the client from being the bottleneck.
    """
    argv = [
        "curl",
        "--silent",
        "--show-error",
        "--location",
        "--noproxy",
        "*",
        "--max-time",
        "600",
        "--output",
        "/dev/null",
        "--write-out",
        "%{http_code} %{size_download}",
        url,
    ]
    started = time.monotonic()
    processes = [
        subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(clients)
    ]
    try:
        outputs = [process.communicate(timeout=660) for process in processes]
        elapsed = time.monotonic() - started
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)
    for (stdout, stderr), process in zip(outputs, processes, strict=True):
        if process.returncode != 0 or stdout.split() != ["200", str(expected)]:
            raise RuntimeError(f"curl GET: rc {process.returncode}, {stdout!r} {stderr[-200:]}")
    return elapsed


# ---------------------------------------------------------------------------------------------
# Parallel clients in separate processes (fork): the GIL never limits the load generator.


def _parallel_entry(
    target: Callable[[Any, Callable[[], None]], Any],
    argument: Any,
    ready: multiprocessing.Queue[Any],
    go: multiprocessing.synchronize.Event,
    results: multiprocessing.Queue[Any],
) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the parent's handler is for the parent

    def wait_for_start() -> None:
        ready.put(os.getpid())
        if not go.wait(timeout=300):
            raise RuntimeError("start signal never came")

    try:
        results.put(("ok", target(argument, wait_for_start)))
    except BaseException as error:  # report anything, including KeyboardInterrupt
        results.put(("error", f"{type(error).__name__}: {error}"))


def run_parallel(
    target: Callable[[Any, Callable[[], None]], Any], arguments: list[Any], timeout: float
) -> tuple[float, list[Any]]:
    """Run target(arg, wait_for_start) in one process per argument; time from the common start.

    Each worker prepares its data, calls wait_for_start() and then does the timed work.
    Returns (wall seconds from start signal until the last result, results).
    """
    context = multiprocessing.get_context("fork")
    ready: multiprocessing.Queue[Any] = context.Queue()
    results: multiprocessing.Queue[Any] = context.Queue()
    go = context.Event()
    processes = [
        context.Process(target=_parallel_entry, args=(target, arg, ready, go, results))
        for arg in arguments
    ]
    try:
        for process in processes:
            process.start()
        for _ in processes:
            ready.get(timeout=300)
        started = time.monotonic()
        go.set()
        collected: list[Any] = []
        for _ in processes:
            status, value = results.get(timeout=timeout)
            if status != "ok":
                raise RuntimeError(f"worker failed: {value}")
            collected.append(value)
        elapsed = time.monotonic() - started
        return elapsed, collected
    finally:
        deadline = time.monotonic() + 30
        for process in processes:
            process.join(timeout=max(0.1, deadline - time.monotonic()))
        for process in processes:
            if process.is_alive():
                process.terminate()
                process.join(timeout=10)


class LeanClient:
    """Keep-alive HTTP/1.1 on the standard library's http.client, for the image pushers.

    httpx spends ~4 ms of CPU per 1 MiB blob pushed (POST + PUT), http.client ~1.7 ms; eight
    httpx pushers took more of the two cores than either registry, so the row measured the
    load generator as much as the servers (the manifest rows use wrk for the same reason).
    """

    def __init__(self, base: str) -> None:
        parts = urllib.parse.urlsplit(base)
        if parts.scheme != "http" or parts.hostname is None or parts.port is None:
            raise ValueError(f"expected http://host:port, got {base}")
        self.connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=300)

    def request(
        self, method: str, target: str, body: bytes, headers: dict[str, str], expected: int
    ) -> tuple[http.client.HTTPResponse, bytes]:
        self.connection.request(method, target, body=body, headers=headers)
        response = self.connection.getresponse()
        content = response.read()  # always drain: the connection is reused
        if response.status != expected:
            raise RuntimeError(
                f"{method} {target}: HTTP {response.status} (expected {expected}): "
                f"{content[:300]!r}"
            )
        return response, content

    def push_blob(self, repo: str, data: bytes, digest: str) -> None:
        """POST + PUT ?digest= (the reference 2.8 has no single-POST monolithic upload)."""
        started, _ = self.request("POST", f"/v2/{repo}/blobs/uploads/", b"", {}, 202)
        location = urllib.parse.urlsplit(started.headers["Location"])  # absolute or not
        separator = "&" if location.query else ""
        target = f"{location.path}?{location.query}{separator}digest={digest}"
        headers = {"Content-Type": "application/octet-stream"}
        self.request("PUT", target, data, headers, 201)

    def close(self) -> None:
        self.connection.close()


@dataclass
class PreparedImage:
    blobs: list[tuple[bytes, str]]  # config and layers with their digests
    manifest: bytes


def prepare_image(layers: list[bytes], label: str) -> PreparedImage:
    config = image_config(layers, label)
    return PreparedImage(
        [(blob, sha256_digest(blob)) for blob in [config, *layers]],
        image_manifest(config, layers),
    )


def _image_push_worker(
    argument: tuple[str, str, int, int, int, float], wait_for_start: Callable[[], None]
) -> int:
    base, repo, images, layers_per_image, layer_size, time_limit = argument
    # Random layers, digests and manifests are made before the clock starts.
    prepared = [
        prepare_image(
            [os.urandom(layer_size) for _ in range(layers_per_image)],
            f"{repo}-{index}-{time.time_ns()}",
        )
        for index in range(images)
    ]
    client = LeanClient(base)
    try:
        wait_for_start()
        deadline = time.monotonic() + time_limit
        for index, image in enumerate(prepared):
            if time.monotonic() > deadline:
                raise RuntimeError(f"time limit reached after {index} images")
            for blob, digest in image.blobs:
                client.push_blob(repo, blob, digest)
            headers = {"Content-Type": OCI_MANIFEST}
            client.request("PUT", f"/v2/{repo}/manifests/img-{index}", image.manifest, headers, 201)
    finally:
        client.close()
    return len(prepared)


# ---------------------------------------------------------------------------------------------
# wrk (C, epoll) for the manifest request rates


WRK_DONE = """
function done(summary, latency, requests)
  io.write(string.format("WRKRESULT %d %d %d %d %d %d %d %d\\n",
    summary.requests, summary.duration, summary.errors.connect, summary.errors.read,
    summary.errors.write, summary.errors.status, summary.errors.timeout,
    latency:percentile(99)))
end
"""


def wrk_fetch_script(method: str) -> str:
    return f'wrk.method = "{method}"\nwrk.headers["Accept"] = "{OCI_MANIFEST}"\n' + WRK_DONE


def wrk_put_script(repo: str, prefix: str, manifest: bytes) -> str:
    body = manifest.decode()
    assert "]==]" not in body
    return (
        f"""
local body = [==[{body}]==]
local headers = {{["Content-Type"] = "{OCI_MANIFEST}"}}
local counter = 0
local thread_count = 0
thread_id = 0
function setup(thread)
  thread:set("thread_id", thread_count)
  thread_count = thread_count + 1
end
function request()
  counter = counter + 1
  local path = "/v2/{repo}/manifests/{prefix}-" .. thread_id .. "-" .. counter
  return wrk.format("PUT", path, headers, body)
end
"""
        + WRK_DONE
    )


@dataclass
class WrkResult:
    requests_per_second: float
    requests: int
    errors: int
    p99_ms: float


def run_wrk(script: str, url: str, connections: int, seconds: int, workdir: Path) -> WrkResult:
    script_path = workdir / f"wrk-{time.time_ns()}.lua"
    script_path.write_text(script)
    threads = max(1, min(connections, len(os.sched_getaffinity(0))))
    argv = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{seconds}s",
        "--timeout",
        "10s",
        "-s",
        str(script_path),
        url,
    ]
    completed = subprocess.run(
        argv, capture_output=True, text=True, timeout=seconds + 60, check=False
    )
    match = re.search(r"WRKRESULT ([\d ]+)", completed.stdout)
    if completed.returncode != 0 or match is None:
        raise RuntimeError(f"wrk failed ({completed.returncode}): {completed.stderr[-500:]}")
    requests, duration_us, *errors, p99_us = (int(v) for v in match.group(1).split())
    return WrkResult(
        requests_per_second=requests / (duration_us / 1e6),
        requests=requests,
        errors=sum(errors),
        p99_ms=p99_us / 1000,
    )


def run_hey(url: str, method: str, connections: int, seconds: int, accept: str) -> WrkResult:
    """hey (Go, Debian package) for HEAD: wrk 4.1's parser waits for a HEAD response's body."""
    argv = [
        "hey",
        "-z",
        f"{seconds}s",
        "-c",
        str(connections),
        "-m",
        method,
        "-A",
        accept,
        "-t",
        "10",
        url,
    ]
    completed = subprocess.run(
        argv, capture_output=True, text=True, timeout=seconds + 60, check=False
    )
    output = completed.stdout
    rate = re.search(r"Requests/sec:\s+([\d.]+)", output)
    if completed.returncode != 0 or rate is None:
        raise RuntimeError(f"hey failed ({completed.returncode}): {completed.stderr[-500:]}")
    statuses = {
        int(code): int(n) for code, n in re.findall(r"\[(\d{3})\]\s+(\d+) responses", output)
    }
    errors = sum(int(n) for n in re.findall(r"^\s+\[(\d+)\]\s+\D", output, re.MULTILINE))
    errors += sum(n for code, n in statuses.items() if code >= 400)
    p99 = re.search(r"99%+ in ([\d.]+) secs", output)
    return WrkResult(
        requests_per_second=float(rate.group(1)),
        requests=sum(statuses.values()) + errors,
        errors=errors,
        p99_ms=float(p99.group(1)) * 1000 if p99 else float("nan"),
    )


# ---------------------------------------------------------------------------------------------
# Listings


def next_link(header: str | None) -> str | None:
    """The path and query of a `Link: <...>; rel="next"` header (absolute or relative)."""
    if not header:
        return None
    match = re.search(r"<([^>]+)>\s*;\s*rel=\"?next\"?", header)
    if not match:
        return None
    target = urllib.parse.urlsplit(match.group(1))
    return f"{target.path}?{target.query}" if target.query else target.path


def full_listing(client: LeanClient, first: str, key: str, max_pages: int) -> int:
    target: str | None = first
    count = 0
    for _ in range(max_pages):
        if target is None:
            return count
        response, content = client.request("GET", target, b"", {}, 200)
        count += len(json.loads(content).get(key) or [])
        target = next_link(response.headers.get("Link"))
    if target is not None:
        raise RuntimeError(f"listing did not end after {max_pages} pages")
    return count


def listings_per_second(
    base: str, first: str, key: str, expected: int, page: int, seconds: float
) -> float:
    """Whole listings per second, one keep-alive client following Link headers."""
    max_pages = expected // page + 3
    client = LeanClient(base)
    try:
        if (found := full_listing(client, first, key, max_pages)) != expected:
            raise RuntimeError(f"listing returned {found} entries, expected {expected}")
        done = 0
        started = time.monotonic()
        for _ in range(1_000_000):
            full_listing(client, first, key, max_pages)
            done += 1
            if time.monotonic() - started >= seconds:
                break
        return done / (time.monotonic() - started)
    finally:
        client.close()


# ---------------------------------------------------------------------------------------------
# Rows


@dataclass
class Row:
    key: str
    label: str
    lower_is_better: bool = False
    values: dict[str, float] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)  # per registry: errors, details
    # Push rows: megabytes (10^6 bytes) one sample sends, so that the server's CPU time per
    # MB can be reported (robust to other work on the machine, unlike the throughputs).
    megabytes: float | None = None
    cpu_ms_per_mb: dict[str, float] = field(default_factory=dict)


@dataclass
class Bench:
    settings: Settings
    registries: list[Registry]
    workdir: Path
    only: list[str] | None
    rows: list[Row] = field(default_factory=list)
    small_file: BlobFile | None = None
    big_file: BlobFile | None = None
    docker_refs: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)  # workloads that stopped early
    ballast: PageCacheBallast | None = None  # with --full-page-cache
    floor: Registry | None = None  # with --floor: a third contender on the blob push rows

    def before_push_sample(self) -> None:
        """Top the page cache up (--full-page-cache), then sync: the kernel writing back an
        earlier run's gigabytes would otherwise slow whichever server runs next."""
        if self.ballast is not None:
            self.ballast.top_up()
        os.sync()

    @property
    def push_contenders(self) -> list[Registry]:
        """The registries, and the floor with --floor: who runs the blob push rows."""
        return self.registries + ([self.floor] if self.floor is not None else [])

    def disk_needed_mib(self) -> int:
        """What the rows keep on disk, roughly (MiB): every blob push sample's blob in each
        contender, and 8 GiB for the image, docker and other rows."""
        s = self.settings
        pushed = 2 * s.blob_repetitions * (s.small_blob + s.big_blob) // MiB
        return len(self.push_contenders) * pushed + 8 * 1024

    def stop_floor(self) -> None:
        """After the blob push rows: the floor and the blobs it kept go, so that the rows
        after them find the machine as they would without --floor."""
        if self.floor is not None:
            self.floor.stop()
            data = self.floor.workdir / "data"
            shutil.rmtree(data, ignore_errors=True)
            log(f"floor stopped; {data} {'still there' if data.exists() else 'removed'}")

    def selected(self, key: str) -> bool:
        if not self.only:
            return True
        return any(key == token or key.startswith(token + "-") for token in self.only)

    def add_row(
        self,
        key: str,
        label: str,
        *,
        lower_is_better: bool = False,
        megabytes: float | None = None,
    ) -> Row:
        row = Row(key=key, label=label, lower_is_better=lower_is_better, megabytes=megabytes)
        self.rows.append(row)
        return row

    def measure(
        self,
        row: Row,
        repetitions: int,
        measure: Callable[[Registry], float],
        contenders: list[Registry] | None = None,
    ) -> None:
        """Median over repetitions, interleaving the contenders (by default the two
        registries) so that all see the same machine state."""
        contenders = self.registries if contenders is None else contenders
        samples: dict[str, list[float]] = {r.name: [] for r in contenders}
        cpu: dict[str, list[float]] = {r.name: [] for r in contenders}
        for repetition in range(repetitions):
            # Per sample, for the log: user and system ms/MB and the machine's free memory
            # before it. System time per MB jumps (2-3 ms/MB) when the page cache grows into
            # memory the host took back (docs/performance.md, "Cold memory"); this shows it.
            split: list[str] = []
            for registry in self.in_turn(repetition, contenders):
                if registry.name in row.notes:
                    continue  # it already failed this row
                if row.megabytes:
                    self.before_push_sample()
                else:
                    os.sync()  # see before_push_sample
                try:
                    free_before = free_memory_mib()
                    user_before, system_before = registry.cpu_split()
                    samples[registry.name].append(measure(registry))
                    if row.megabytes:
                        user_after, system_after = registry.cpu_split()
                        user = (user_after - user_before) * 1000 / row.megabytes
                        system = (system_after - system_before) * 1000 / row.megabytes
                        cpu[registry.name].append(user + system)
                        split.append(
                            f"{registry.name} {user:.2f}+{system:.2f} (free {free_before} MiB)"
                        )
                except Exception as error:
                    row.notes[registry.name] = f"error: {error}"[:200]
                    log(f"{row.label} / {registry.name}: {row.notes[registry.name]}")
                    traceback.print_exc(file=sys.stderr)
                    if registry is not self.floor:  # a dead floor ends only its own samples
                        self.check_alive(registry)
            log(
                f"{row.label} rep {repetition + 1}: "
                + ", ".join(
                    f"{name}={values[-1]:.2f}" for name, values in samples.items() if values
                )
                + (f"; server CPU ms/MB user+system: {', '.join(split)}" if split else "")
            )
        for name, values in samples.items():
            if values:
                row.values[name] = statistics.median(values)
        for name, values in cpu.items():
            if values:
                row.cpu_ms_per_mb[name] = statistics.median(values)

    def in_turn(self, repetition: int, contenders: list[Registry] | None = None) -> list[Registry]:
        """The registries (or `contenders`) in each of their orders in turn: two alternate
        which goes first; three (--floor) take every place and follow each other in every
        way over six repetitions, where reversing the order every other time would keep one
        in the middle, and rotating it would keep who follows whom."""
        contenders = self.registries if contenders is None else contenders
        orders = list(itertools.permutations(contenders))
        return list(orders[repetition % len(orders)])

    def check_alive(self, registry: Registry) -> None:
        if registry.process is not None and registry.process.poll() is not None:
            raise RuntimeError(f"{registry.name} died:\n{registry.log_tail()}")

    # -- fixtures ---------------------------------------------------------------------------

    def blob_files(self) -> tuple[BlobFile, BlobFile]:
        if self.small_file is None or self.big_file is None:
            log("generating random blob files")
            self.small_file = BlobFile.create(self.workdir / "small.bin", self.settings.small_blob)
            self.big_file = BlobFile.create(self.workdir / "big.bin", self.settings.big_blob)
        return self.small_file, self.big_file

    # -- workloads --------------------------------------------------------------------------

    def blob_push_rows(self) -> None:
        small, big = self.blob_files()
        reps = self.settings.blob_repetitions
        for mode in ("mono", "chunked"):
            for blob in (small, big):
                size_mib = blob.size // MiB
                key = f"{mode}-{size_mib}"
                if not self.selected(key):
                    continue
                if mode == "mono":
                    label = f"monolithic blob push {size_mib} MiB (MiB/s)"
                else:
                    label = (
                        f"chunked blob push {size_mib} MiB, "
                        f"{self.settings.patch_chunk // MiB} MiB PATCHes (MiB/s)"
                    )
                row = self.add_row(key, label, megabytes=blob.size / 1e6)

                def measure(registry: Registry, blob: BlobFile = blob, mode: str = mode) -> float:
                    with new_client() as client:
                        started = time.monotonic()
                        if mode == "mono":
                            push_blob_monolithic(client, registry.base, "bench/blobs", blob)
                        else:
                            push_blob_chunked(
                                client,
                                registry.base,
                                "bench/blobs",
                                blob,
                                self.settings.patch_chunk,
                            )
                        return blob.size / MiB / (time.monotonic() - started)

                self.measure(row, reps, measure, self.push_contenders)

    def blob_pull_rows(self) -> None:
        _, big = self.blob_files()
        for clients in (1, 4):
            key = f"pull-{clients}"
            if not self.selected(key):
                continue
            row = self.add_row(
                key, f"blob pull {big.size // MiB} MiB, {clients} concurrent client(s) (MiB/s)"
            )

            def measure(registry: Registry, clients: int = clients) -> float:
                if "pull_blob" not in registry.prepared:
                    with new_client() as client:
                        pushed = push_blob_monolithic(client, registry.base, "bench/blobs", big)
                    registry.prepared["pull_blob"] = pushed
                digest, size = registry.prepared["pull_blob"]
                url = f"{registry.base}/v2/bench/blobs/blobs/{digest}"
                elapsed = curl_pull(url, clients, size)
                return float(clients * size) / MiB / elapsed

            self.measure(row, max(2, self.settings.blob_repetitions), measure)

    def manifest_rows(self) -> None:
        wanted = [
            (method, c)
            for method in ("PUT", "GET", "HEAD")
            for c in (1, 16, 64)
            if self.selected(f"manifest-{method.lower()}-{c}")
        ]
        if not wanted:
            return
        for method, connections in wanted:
            row = self.add_row(
                f"manifest-{method.lower()}-{connections}",
                f"manifest {method} c={connections} "
                f"(req/s, {'hey' if method == 'HEAD' else 'wrk'})",
            )

            def measure(
                registry: Registry, method: str = method, c: int = connections, row: Row = row
            ) -> float:
                manifest = self.prepare_manifests(registry)
                seconds = self.settings.wrk_seconds
                cpu_before = registry.cpu_seconds()
                url = f"{registry.base}/v2/bench/manifests/manifests/v1"
                if method == "PUT":
                    prefix = f"c{c}-{time.time_ns()}"  # a distinct tag for every request
                    script = wrk_put_script("bench/manifest-put", prefix, manifest)
                    put_url = f"{registry.base}/v2/bench/manifest-put/manifests/x"
                    result = run_wrk(script, put_url, c, seconds, self.workdir)
                elif method == "GET":
                    result = run_wrk(wrk_fetch_script("GET"), url, c, seconds, self.workdir)
                else:
                    result = run_hey(url, "HEAD", c, seconds, OCI_MANIFEST)
                detail = f"p99 {result.p99_ms:.1f} ms"
                if result.requests:
                    # The server's CPU per request: steadier than req/s on a shared machine.
                    spent = registry.cpu_seconds() - cpu_before
                    detail += f", server CPU {spent / result.requests * 1e6:.0f} µs/request"
                if result.errors:
                    detail += f", {result.errors} errors of {result.requests}"
                    row.notes[registry.name] = detail
                log(f"{row.label} / {registry.name}: {result.requests_per_second:.0f} ({detail})")
                if result.errors > result.requests // 100:
                    raise RuntimeError(detail)
                return result.requests_per_second

            self.measure(row, self.settings.load_repetitions, measure)

    def prepare_manifests(self, registry: Registry) -> bytes:
        if "manifest" not in registry.prepared:
            config, layers = small_image("manifests")
            with new_client() as client:
                pushed = push_image(client, registry.base, "bench/manifests", "v1", config, layers)
                push_image(client, registry.base, "bench/manifest-put", "v0", config, layers)
                base = f"{registry.base}/v2/bench/manifests/manifests/v1"
                got = expect(client.get(base, headers={"Accept": OCI_MANIFEST}), 200)
                if got.content != pushed:
                    raise RuntimeError("GET returned a different manifest than was PUT")
                expect(client.head(base, headers={"Accept": OCI_MANIFEST}), 200)
            registry.prepared["manifest"] = pushed
        manifest: bytes = registry.prepared["manifest"]
        return manifest

    def image_push_row(self) -> None:
        s = self.settings
        key = f"images-{s.image_clients}"
        if not self.selected(key):
            return
        row = self.add_row(
            key,
            f"{s.image_clients} clients pushing images of {s.layers_per_image} x "
            f"{s.layer_size // MiB} MiB layers (images/s)",
            # The layers' bytes (configs and manifests are a few hundred bytes each).
            megabytes=s.image_clients
            * s.images_per_client
            * s.layers_per_image
            * s.layer_size
            / 1e6,
        )

        def measure(registry: Registry) -> float:
            arguments = [
                (
                    registry.base,
                    f"bench/push-{i}",
                    s.images_per_client,
                    s.layers_per_image,
                    s.layer_size,
                    600.0,
                )
                for i in range(s.image_clients)
            ]
            elapsed, pushed = run_parallel(_image_push_worker, arguments, timeout=900)
            return float(sum(pushed)) / elapsed

        self.measure(row, s.load_repetitions, measure)

    def tags_row(self) -> None:
        s = self.settings
        if not self.selected("tags"):
            return
        row = self.add_row("tags", f"tags list, {s.tag_count} tags, n=100 pages (listings/s)")

        def measure(registry: Registry) -> float:
            repo = "bench/tags"
            with new_client() as client:
                if "tags" not in registry.prepared:
                    config, layers = small_image("tags")
                    manifest = push_image(client, registry.base, repo, "tag-00000", config, layers)

                    def put_tag(index: int) -> None:
                        expect(
                            client.put(
                                f"{registry.base}/v2/{repo}/manifests/tag-{index:05d}",
                                content=manifest,
                                headers={"Content-Type": OCI_MANIFEST},
                            ),
                            201,
                        )

                    with ThreadPoolExecutor(max_workers=8) as pool:
                        list(pool.map(put_tag, range(1, s.tag_count)))
                    registry.prepared["tags"] = True
                return listings_per_second(
                    registry.base,
                    f"/v2/{repo}/tags/list?n=100",
                    "tags",
                    s.tag_count,
                    100,
                    s.listing_seconds,
                )

        self.measure(row, s.load_repetitions, measure)
        # Distribution 2.8 ignores `n` on tags lists and answers all tags in one response, so
        # the paginated row above compares 11 requests with 1. Also measure one request each.
        whole = self.add_row(
            "tags", f"tags list, {s.tag_count} tags, one request without n (listings/s)"
        )

        def measure_whole(registry: Registry) -> float:
            return listings_per_second(
                registry.base,
                "/v2/bench/tags/tags/list",
                "tags",
                s.tag_count,
                s.tag_count,
                s.listing_seconds,
            )

        self.measure(whole, s.load_repetitions, measure_whole)

    def versions_rows(self) -> None:
        """Issue 20: a manifest PUT must cost the same in a repository of 10,000 versions as
        in one of 10, and as a plain-tag PUT; the version tree and a tag's history must stay
        fast. cangku only (the reference registry has no floating tags): its own rows compared
        with each other, in one run, samples interleaved."""
        s = self.settings
        if not self.selected("versions"):
            return
        cangku = next((r for r in self.registries if r.name == "cangku"), None)
        if cangku is None:
            return
        many = s.version_count
        labels = {
            "plain": "manifest PUT, plain tag, repository of 10 tags (ms)",
            "few": "manifest PUT, next version, repository of 10 versions (ms)",
            "many": f"manifest PUT, next version, repository of {many:,} versions (ms)",
        }
        rows = {
            key: self.add_row(f"versions-{key}", label, lower_is_better=True)
            for key, label in labels.items()
        }
        pages = {
            "tree": "/api/v1/repositories/bench/versions-many/versions",
            "history": "/api/v1/repositories/bench/versions-many/tags/latest/history",
            "page": "/r/bench/versions-many",
        }
        page_rows = {
            key: self.add_row(
                f"versions-{key}",
                f"GET {path.replace('bench/versions-many', '<repo>')}, {many:,} versions (ms)",
                lower_is_better=True,
            )
            for key, path in pages.items()
        }
        ratio_many = self.add_row(
            "versions-ratio", f"PUT at {many:,} versions / at 10 versions (goal <= 1.2)"
        )
        ratio_plain = self.add_row(
            "versions-ratio", f"PUT at {many:,} versions / plain-tag PUT (goal <= 1.2)"
        )
        for row in [*rows.values(), *page_rows.values(), ratio_many, ratio_plain]:
            for registry in self.registries:
                if registry is not cangku:
                    row.notes[registry.name] = "not measured: cangku's own comparison"
        base = cangku.base
        config, layers = small_image("versions")

        def manifest(label: str) -> bytes:
            # Distinct manifests (an annotation) over the same blobs, as CI pushes are.
            document = json.loads(image_manifest(config, layers))
            document["annotations"] = {"bench": label}
            return json.dumps(document, separators=(",", ":")).encode()

        def put(client: httpx.Client, repo: str, tag: str) -> float:
            body = manifest(f"{repo}:{tag}")
            started = time.perf_counter()
            expect(
                client.put(
                    f"{base}/v2/{repo}/manifests/{tag}",
                    content=body,
                    headers={"Content-Type": OCI_MANIFEST},
                ),
                201,
            )
            return (time.perf_counter() - started) * 1000

        def version(index: int) -> str:
            return f"{index // 100}.{index // 10 % 10}.{index % 10}"

        with new_client() as client:
            repos = {
                "plain": "bench/plain",
                "few": "bench/versions-few",
                "many": "bench/versions-many",
            }
            for repo in repos.values():
                push_image(client, base, repo, "base", config, layers)
            log(f"versions: pushing {many:,} versions")
            for index in range(10):
                put(client, repos["plain"], f"build-{index}")
                put(client, repos["few"], version(index))

            def seed(index: int) -> None:
                with new_client() as own:
                    for item in range(index, many, 8):
                        put(own, repos["many"], version(item))

            with ThreadPoolExecutor(max_workers=8) as pool:
                list(pool.map(seed, range(8)))
            samples: dict[str, list[float]] = {key: [] for key in repos}
            # Each sample pushes a new highest version (it moves MAJOR.MINOR, MAJOR and latest)
            # or a new plain tag, then deletes it untimed, so the repositories keep their size.
            for sample in range(s.version_samples):
                for key in repos if sample % 2 == 0 else reversed(list(repos)):
                    tag = f"build-{1000 + sample}" if key == "plain" else f"{1000 + sample}.0.0"
                    samples[key].append(put(client, repos[key], tag))
                    expect(client.delete(f"{base}/v2/{repos[key]}/manifests/{tag}"), 202)
            for key, values in samples.items():
                rows[key].values["cangku"] = statistics.median(values)
            for key, path in pages.items():
                timings = []
                for _ in range(s.version_samples // 10):
                    started = time.perf_counter()
                    expect(client.get(f"{base}{path}"), 200)
                    timings.append((time.perf_counter() - started) * 1000)
                page_rows[key].values["cangku"] = statistics.median(timings)
        medians = {key: row.values["cangku"] for key, row in rows.items()}
        ratio_many.values["cangku"] = medians["many"] / medians["few"]
        ratio_plain.values["cangku"] = medians["many"] / medians["plain"]
        log(
            "versions: "
            + ", ".join(f"{row.label} = {row.values['cangku']:.2f}" for row in self.rows[-8:])
        )

    def catalog_row(self) -> None:
        s = self.settings
        if not self.selected("catalog"):
            return
        row = self.add_row(
            "catalog", f"catalog, {s.catalog_repos} repositories, n=50 pages (listings/s)"
        )

        def measure(registry: Registry) -> float:
            first = "/v2/_catalog?n=50"
            with new_client() as client:
                counter = LeanClient(registry.base)
                try:
                    existing = full_listing(counter, first, "repositories", 10_000)
                finally:
                    counter.close()
                missing = s.catalog_repos - existing
                if missing < 0:
                    raise RuntimeError(f"already {existing} repositories")
                config, layers = small_image("catalog")

                def create(index: int) -> None:
                    push_image(client, registry.base, f"bench/cat-{index:04d}", "1", config, layers)

                with ThreadPoolExecutor(max_workers=8) as pool:
                    list(pool.map(create, range(missing)))
            return listings_per_second(
                registry.base, first, "repositories", s.catalog_repos, 50, s.listing_seconds
            )

        self.measure(row, s.load_repetitions, measure)

    def docker_rows(self) -> None:
        if not (self.selected("docker-push") or self.selected("docker-pull")):
            return
        s = self.settings
        size_mb = s.docker_layers * s.docker_layer_size // 1_000_000
        what = f"{s.docker_layers}-layer {size_mb} MB image"
        push_row = self.add_row(
            "docker-push",
            f"docker push {what} (s)",
            lower_is_better=True,
            # Random layers: gzip leaves their size as it is.
            megabytes=s.docker_layers * s.docker_layer_size / 1e6,
        )
        push_cpu: dict[str, list[float]] = {r.name: [] for r in self.registries}
        pull_row = self.add_row("docker-pull", f"docker pull {what} (s)", lower_is_better=True)
        if docker(["info"], timeout=30).returncode != 0:
            for row in (push_row, pull_row):
                for registry in self.registries:
                    row.notes[registry.name] = "skipped: no docker engine"
            return
        # A registry that already has a layer is not sent it again, so every repetition pushes
        # a freshly built image with new random layers.
        base = self.docker_import_base()
        engine = dockerd_pid()  # Its CPU per push is logged beside the server's.
        refs: list[dict[str, str]] = []
        pushes: dict[str, list[float]] = {r.name: [] for r in self.registries}
        for repetition in range(s.docker_repetitions):
            built = self.docker_build(base, repetition)
            refs.append({})
            for registry in self.in_turn(repetition):
                ref = f"localhost:{registry.port}/bench/img:{repetition}"
                self.docker_refs.append(ref)
                docker_ok(["tag", built, ref])
                refs[repetition][registry.name] = ref
                if registry.name in push_row.notes:
                    continue
                self.before_push_sample()  # outside the try: its errors are not a push's
                try:
                    free_before = free_memory_mib()
                    user_before, system_before = registry.cpu_split()
                    faults_before = registry.minor_faults()
                    dockerd_before = None if engine is None else process_cpu_seconds(engine)
                    pushes[registry.name].append(timed_docker(["push", ref]))
                    user_after, system_after = registry.cpu_split()
                    dockerd_after = None if engine is None else process_cpu_seconds(engine)
                    megabytes = push_row.megabytes or 1
                    user = (user_after - user_before) * 1000 / megabytes
                    system = (system_after - system_before) * 1000 / megabytes
                    faults = (registry.minor_faults() - faults_before) / megabytes
                    push_cpu[registry.name].append(user + system)
                    # The client's side of the push (dockerd gzips every layer): the wall
                    # time is shared between it and the server on the same cores.
                    client = (
                        f"{(dockerd_after - dockerd_before) * 1000 / megabytes:.1f} ms/MB"
                        if dockerd_before is not None and dockerd_after is not None
                        else "unknown"
                    )
                    log(
                        f"docker push {registry.name}: {pushes[registry.name][-1]:.2f} s, "
                        f"server CPU ms/MB user+system {user:.2f}+{system:.2f}, "
                        f"minor faults/MB {faults:.0f} (free {free_before} MiB), "
                        f"dockerd CPU {client}"
                    )
                except Exception as error:
                    push_row.notes[registry.name] = f"error: {error}"[:200]
                    log(f"docker push {registry.name}: {error}")
        for name, values in pushes.items():
            if values:
                push_row.values[name] = statistics.median(values)
        for name, values in push_cpu.items():
            if values:
                push_row.cpu_ms_per_mb[name] = statistics.median(values)
        # Remove every local copy so that the pulls really transfer every layer.
        for ref in reversed(self.docker_refs):
            docker(["rmi", ref], timeout=120)
        for ref in self.docker_refs:
            if docker(["image", "inspect", ref], timeout=30).returncode == 0:
                raise RuntimeError(f"{ref} still present after docker rmi")
        pulls: dict[str, list[float]] = {r.name: [] for r in self.registries}
        for repetition in range(s.docker_repetitions):
            for registry in self.in_turn(repetition):
                if registry.name in push_row.notes:
                    pull_row.notes[registry.name] = "skipped: push failed"
                    continue
                if registry.name in pull_row.notes:
                    continue
                ref = refs[repetition][registry.name]
                try:
                    pulls[registry.name].append(timed_docker(["pull", ref]))
                    log(f"docker pull {registry.name}: {pulls[registry.name][-1]:.2f} s")
                except Exception as error:
                    pull_row.notes[registry.name] = f"error: {error}"[:200]
                    log(f"docker pull {registry.name}: {error}")
                finally:
                    docker(["rmi", ref], timeout=120)  # the next pull starts from nothing
        for name, values in pulls.items():
            if values:
                pull_row.values[name] = statistics.median(values)

    def docker_import_base(self) -> str:
        base_tar = self.workdir / "base.tar"
        hello = self.workdir / "hello.txt"
        hello.write_text("cangku benchmark base layer\n")
        with tarfile.open(base_tar, "w") as tar:
            tar.add(hello, arcname="hello.txt")
        base = f"cangku-bench-base:{os.getpid()}-{time.time_ns()}"
        self.docker_refs.append(base)
        docker_ok(["import", str(base_tar), base])
        return base

    def docker_build(self, base: str, repetition: int) -> str:
        s = self.settings
        context = self.workdir / f"docker-context-{repetition}"
        context.mkdir()
        dockerfile = [f"FROM {base}"]
        for index in range(s.docker_layers):
            BlobFile.create(context / f"layer{index}.bin", s.docker_layer_size)
            dockerfile.append(f"COPY layer{index}.bin /layer{index}.bin")
        (context / "Dockerfile").write_text("\n".join(dockerfile) + "\n")
        built = f"cangku-bench-img:{os.getpid()}-{time.time_ns()}"
        self.docker_refs.append(built)
        log(f"docker build {built}")
        docker_ok(["build", "-q", "-t", built, str(context)], env={"DOCKER_BUILDKIT": "0"})
        shutil.rmtree(context)
        return built

    def docker_cleanup(self) -> None:
        for ref in self.docker_refs:
            with contextlib.suppress(Exception):
                if docker(["image", "inspect", ref], timeout=30).returncode == 0:
                    docker(["rmi", "-f", ref], timeout=120)


def docker(
    args: list[str], *, timeout: float = SUBPROCESS_TIMEOUT, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["docker", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, **(env or {})},
    )


def docker_ok(args: list[str], *, env: dict[str, str] | None = None) -> str:
    completed = docker(args, env=env)
    if completed.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args)} failed: {completed.stderr[-500:]}")
    return completed.stdout


def timed_docker(args: list[str]) -> float:
    started = time.monotonic()
    docker_ok(args)
    return time.monotonic() - started


# ---------------------------------------------------------------------------------------------
# Report


def machine_info(registries: list[Registry]) -> list[str]:
    def command_output(argv: list[str]) -> str:
        try:
            completed = subprocess.run(argv, capture_output=True, text=True, timeout=30)
            return (completed.stdout or completed.stderr).strip().splitlines()[0]
        except (OSError, subprocess.SubprocessError, IndexError):
            return "unavailable"

    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    total_mib = meminfo_mib("MemTotal")
    memory = f"{total_mib / 1024:.1f} GiB" if total_mib else "unknown"
    cangku_version = "unknown"
    with contextlib.suppress(Exception):
        from importlib.metadata import version

        cangku_version = version("cangku")
    return [
        f"- date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}",
        f"- nproc: {len(os.sched_getaffinity(0))} (CPU: {cpu}), memory: {memory}, "
        f"kernel: {platform.release()}",
        f"- python: {platform.python_version()} ({sys.executable})",
        f"- wrk: {command_output(['wrk', '--version'])}",
        f"- docker engine: {command_output(['docker', 'version', '-f', '{{.Server.Version}}'])}",
        f"- reference: {command_output([REFERENCE_BINARY, '--version'])}",
        f"- cangku: {cangku_version}; command: `{shlex.join(registries[1].argv)}`",
        f"- load average before the run (1/5/15 min): {load_average()}",
    ]


def dockerd_pid() -> int | None:
    """The local engine's PID: the one in /var/run/docker.pid if it is a dockerd, else the
    only process named dockerd; None if there is none, or several (engines in containers)."""
    with contextlib.suppress(OSError, ValueError):
        pid = int(Path("/var/run/docker.pid").read_text())
        if process_name(pid) == "dockerd":
            return pid
    found = [
        int(stat.parent.name)
        for stat in Path("/proc").glob("[0-9]*/stat")
        if process_name(int(stat.parent.name)) == "dockerd"
    ]
    return found[0] if len(found) == 1 else None


def process_name(pid: int) -> str | None:
    """The command name in /proc/PID/stat (between the first "(" and the last ")")."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.find("(") + 1 : text.rfind(")")]


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of process `pid` so far, all its threads (fields 14 and 15
    of /proc/PID/stat); None if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    except (OSError, IndexError, ValueError):
        return None


def meminfo_mib(name: str) -> int:
    """Field `name` of /proc/meminfo (e.g. "MemTotal") in MiB (0 if unreadable)."""
    with contextlib.suppress(OSError, IndexError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(f"{name}:"):
                return int(line.split()[1]) // 1024
    return 0


def free_memory_mib() -> int:
    """MemFree of /proc/meminfo in MiB (0 if unreadable)."""
    return meminfo_mib("MemFree")


@dataclass
class PageCacheBallast:
    """Files of zeros whose page cache takes the machine's free memory, as blobs do on a
    server that has been up for a while (`--full-page-cache`). Pushes then land in
    page-cache pages that reclaim frees, not in never-used memory: on a VM whose balloon
    reports free pages to the host, a never-used page costs any writer ~3 ms of system time
    per MiB (docs/performance.md, "Sessions 16 and 17").

    The fill fades: a DAMON `pageout` scheme on such a VM reclaims page cache left alone
    for a minute, and free memory grows back (~20 MiB/s here). `top_up()` before each push
    sample writes new files until free memory is down to `KEEP_FREE_MIB` again, deleting
    the oldest files first to stay within `cap_mib` on disk (what the delete frees, the
    loop fills). Rewriting old files would not do: their pages may still be cached, and
    then nothing is taken from free memory. Writes are 64 KiB: a fill in 8 MiB writes left
    3.5 GiB free, one in 64 KiB writes 375 MiB (large writes take large folios, "Cold
    memory" in docs/performance.md)."""

    directory: Path
    cap_mib: int
    files: list[tuple[Path, int]] = field(default_factory=list)  # oldest first, MiB each
    made: int = 0  # files made so far, for their names

    # Free memory to leave: above kswapd's high watermark (~115 MiB here), so the ballast
    # itself does not make the kernel reclaim, and little enough that a push sample soon
    # writes into pages that reclaim frees.
    KEEP_FREE_MIB = 384
    FILE_MIB = 1024
    CHECK_MIB = 64  # free memory is read after every CHECK_MIB written
    WRITE_KIB = 64

    @classmethod
    def fill(cls, directory: Path, rows_mib: int) -> PageCacheBallast:
        """Fill free memory with files under `directory`, which the caller removes with the
        rest of the run. Raises RuntimeError if the disk has less room than the machine's
        memory, 4 GiB to rotate the files and `rows_mib` (MiB) for what the rows keep, or if
        free memory did not come down (e.g. a cgroup's memory limit reclaims the files'
        pages); OSError if `directory` exists or a write fails."""
        cap_mib = meminfo_mib("MemTotal") + 4 * 1024
        room = shutil.disk_usage(directory).free // MiB
        if room < cap_mib + rows_mib:
            raise RuntimeError(
                f"--full-page-cache: up to {cap_mib} MiB of ballast and {rows_mib} MiB for "
                f"the rows, {room} MiB free on disk"
            )
        ballast = cls(directory=directory / "page-cache-ballast", cap_mib=cap_mib)
        ballast.directory.mkdir()
        ballast.write_until_free("filled")
        free = free_memory_mib()
        if not 0 < free <= 2 * cls.KEEP_FREE_MIB:
            raise RuntimeError(f"--full-page-cache: {free} MiB still free after the fill")
        return ballast

    def top_up(self) -> None:
        """Bring free memory down to `KEEP_FREE_MIB` once it has grown past 1.5 times that
        (not every few MiB DAMON frees between two samples is worth a top-up)."""
        if free_memory_mib() > self.KEEP_FREE_MIB * 3 // 2:
            self.write_until_free("topped up")

    def write_until_free(self, verb: str) -> None:
        """Write new files, fsync'd, until free memory is at most `KEEP_FREE_MIB`. Writes at
        most twice the excess free memory found at the start, and a file more: if free
        memory does not come down (something else frees as fast), it stops there and logs
        it rather than write on for ever."""
        assert self.FILE_MIB % self.CHECK_MIB == 0 and self.CHECK_MIB * 1024 % self.WRITE_KIB == 0
        block = bytes(self.WRITE_KIB * 1024)
        writes_per_check = self.CHECK_MIB * 1024 // self.WRITE_KIB
        free = free_before = free_memory_mib()
        limit_mib = 2 * max(0, free_before - self.KEEP_FREE_MIB) + self.FILE_MIB
        started = time.monotonic()
        written = deleted = 0
        while free > self.KEEP_FREE_MIB and written < limit_mib:
            while self.files and self.on_disk_mib() + self.FILE_MIB > self.cap_mib:
                path, mib = self.files.pop(0)
                path.unlink()
                deleted += mib
            self.made += 1
            path = self.directory / f"{self.made:06d}"
            self.files.append((path, 0))
            size = 0
            with path.open("wb", buffering=0) as ballast:
                while size < self.FILE_MIB and free > self.KEEP_FREE_MIB:
                    for _ in range(writes_per_check):
                        ballast.write(block)
                    size += self.CHECK_MIB
                    self.files[-1] = (path, size)
                    free = free_memory_mib()
                os.fsync(ballast.fileno())
            written += size
        log(
            f"page cache: {verb} {written} MiB (deleted {deleted} MiB) in "
            f"{time.monotonic() - started:.1f} s, free {free_before} -> {free_memory_mib()} MiB"
            + ("" if free <= self.KEEP_FREE_MIB else "; free memory did not come down, stopped")
        )

    def on_disk_mib(self) -> int:
        """MiB in the ballast's files now (as written, whole `CHECK_MIB` steps)."""
        return sum(mib for _, mib in self.files)


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def format_value(value: float | None) -> str:
    if value is None:
        return "n/a"
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def render(bench: Bench, info: list[str], rss: dict[str, tuple[int, int]]) -> str:
    s = bench.settings
    lines = ["# cangku vs CNCF Distribution 2.8.2", ""]
    lines += info
    lines += [
        f"- load average after the run: {load_average()} (other work on the machine skews "
        "both columns; rows interleave the registries to share the disturbance)",
        f"- mode: {'--quick (smoke run)' if s.quick else 'full'}",
        "",
    ]
    lines += [
        "| workload | reference | cangku | ratio | server CPU ms/MB: reference / cangku |",
        "|---|---:|---:|---:|---:|",
    ]
    footnotes: list[str] = []
    for row in bench.rows:
        ref = row.values.get("reference")
        can = row.values.get("cangku")
        cells = []
        for name, value in (("reference", ref), ("cangku", can)):
            cell = format_value(value)
            if name in row.notes:
                footnotes.append(f"{row.label} / {name}: {row.notes[name]}")
                cell += f" [{len(footnotes)}]"
            cells.append(cell)
        ratio = "n/a"
        if ref and can:
            ratio = f"{(ref / can if row.lower_is_better else can / ref):.2f}"
        cpu = ""
        if row.cpu_ms_per_mb:
            cpu = " / ".join(
                f"{row.cpu_ms_per_mb[name]:.2f}" if name in row.cpu_ms_per_mb else "n/a"
                for name in ("reference", "cangku")
            )
        lines.append(f"| {row.label} | {cells[0]} | {cells[1]} | {ratio} | {cpu} |")
    if bench.floor is not None:
        lines += render_floor(bench.rows, footnotes)
    lines += ["", "Server RSS peak (VmHWM; main process + descendants):", ""]
    for name, (main, total) in rss.items():
        lines.append(f"- {name}: {main / 1024:.0f} MiB (with descendants: {total / 1024:.0f} MiB)")
    lines += [
        "",
        "Notes:",
        "- ratio = cangku/reference for throughputs, reference/cangku for the docker times; "
        "higher is better for cangku in every row.",
        "- server CPU ms/MB (push rows): user + system CPU time of the server process (and "
        "its descendants) from /proc/PID/stat across each sample, per 10^6 bytes pushed, "
        "median; it counts only the server's work, so other load on the machine moves it far "
        "less than the throughputs. The log gives each sample's user + system split and the "
        "free memory before it: system time rises by 2-3 ms/MB when a page cache growing "
        "into free memory touches pages the host took back (docs/performance.md, "
        '"Cold memory").',
        "- every row runs the registries interleaved, in each order in turn (each run "
        "after a `sync`, so no run pays for an earlier one's writeback), and "
        "reports the median of the repetitions.",
        f"- blob push: httpx in the benchmark process, {s.blob_repetitions} uploads per "
        "registry, each a distinct blob (the random file + a unique suffix); monolithic = "
        "POST + PUT ?digest= with the body, chunked = POST + PATCHes with Content-Range + "
        "PUT ?digest=.",
        f"- blob pull: {max(2, s.blob_repetitions)} runs; one curl process per client (httpx "
        "parsing would be the bottleneck), aggregate MiB/s from a common start.",
        f"- manifest rows: {s.load_repetitions} x {s.wrk_seconds} s runs per registry, "
        "keep-alive, small OCI image manifest; PUT and GET with wrk (C, lua scripts; PUT uses "
        "a distinct tag per request), HEAD with hey (Go; wrk 4.1 cannot parse HEAD responses); "
        "Accept header on GET/HEAD. The load generator runs on the same cores as the server.",
        f"- image push: {s.load_repetitions} runs of {s.image_clients} processes "
        f"(http.client, keep-alive: httpx cost the clients 2.4x the CPU), "
        f"{s.images_per_client} images each, each image = distinct random layers + config "
        "blobs (POST + PUT) + manifest PUT; data and digests made before the clock starts.",
        "- listings: one sequential http.client client (keep-alive) following Link headers, "
        f"{s.load_repetitions} x {s.listing_seconds:g} s runs; every listing is checked "
        "complete once.",
        "- docker rows: `docker push`/`docker pull` wall time via the local engine "
        f"(dockerd gzips layers on push); {s.docker_repetitions} pushes of freshly built images "
        "(new random layers each) and as many pulls, all local copies removed before each "
        "pull.",
        "- reference config: filesystem storage, delete enabled, log level warn, no blob "
        "descriptor cache; cangku: `--open`, log level warning (neither logs each request).",
    ]
    if bench.floor is not None:
        lines.append(
            "- floor (`--floor`): benchmarks/floor_sink.py, a third contender interleaved on "
            "the blob push rows (stopped, its blobs deleted, after them): receive, sha256, "
            "32 KiB writes into the page cache, rename, and nothing else; what this minimal "
            "pipeline costs per MB on this machine in the same state of memory."
        )
    if bench.failures:
        lines += ["", "Workloads that stopped early:"]
        lines += [f"- {text}" for text in bench.failures]
    if footnotes:
        lines += ["", "Footnotes:"]
        lines += [f"{i}. {text}" for i, text in enumerate(footnotes, start=1)]
    return "\n".join(lines) + "\n"


def render_floor(rows: list[Row], footnotes: list[str]) -> list[str]:
    """The floor's rows: its throughput and CPU per MB, and each contender's CPU as a share of
    the reference's (issue 18 asks cangku for <= 0.5)."""
    lines = [
        "",
        "The floor (`--floor`): receive, sha256, 32 KiB writes, rename; nothing else.",
        "",
        "| workload | floor | server CPU ms/MB: floor | CPU share of the reference's: "
        "floor / cangku |",
        "|---|---:|---:|---:|",
    ]
    for row in rows:
        if "floor" not in row.values and "floor" not in row.notes:
            continue
        cell = format_value(row.values.get("floor"))
        if "floor" in row.notes:
            footnotes.append(f"{row.label} / floor: {row.notes['floor']}")
            cell += f" [{len(footnotes)}]"
        cpu = row.cpu_ms_per_mb
        reference = cpu.get("reference")
        shares = " / ".join(
            f"{cpu[name] / reference:.2f}" if reference and name in cpu else "n/a"
            for name in ("floor", "cangku")
        )
        floor_cpu = f"{cpu['floor']:.2f}" if "floor" in cpu else "n/a"
        lines.append(f"| {row.label} | {cell} | {floor_cpu} | {shares} |")
    return lines


# ---------------------------------------------------------------------------------------------
# Main


ROW_KEYS = (
    "mono-<MiB>, chunked-<MiB>, pull-1, pull-4, manifest-{put,get,head}-{1,16,64}, "
    "images-8, tags, versions, catalog, docker-push, docker-pull"
)


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, short durations")
    parser.add_argument(
        "--only",
        help=f"comma-separated row keys or prefixes (mono, manifest, ...): {ROW_KEYS}",
    )
    parser.add_argument(
        "--cangku-cmd",
        default=os.environ.get("CANGKU_BENCH_CMD", DEFAULT_CANGKU_CMD),
        help="command template with {port} and {data}; 'reference' runs a second reference",
    )
    parser.add_argument("--output", type=Path, help="also write the report to this file")
    parser.add_argument(
        "--floor",
        action="store_true",
        help="also run benchmarks/floor_sink.py on the blob push rows, interleaved: what a "
        "minimal Python pipeline (receive, sha256, 32 KiB writes, rename) spends per MB here",
    )
    parser.add_argument(
        "--full-page-cache",
        action="store_true",
        help="fill free memory with page cache first (files of zeros) and keep it full "
        "before each push sample: the state of a server that has been up "
        "for a while; without it, a VM whose free memory went back to the host measures "
        "the cost of touching never-used memory",
    )
    return parser.parse_args()


def main() -> int:
    arguments = parse_arguments()
    settings = Settings.build(arguments.quick)
    only = [t.strip() for t in arguments.only.split(",") if t.strip()] if arguments.only else None

    def terminate(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, terminate)
    if shutil.which("wrk") is None:
        log("wrk not found: install it with `apt-get install -y wrk` (manifest rows will fail)")
    root = Path(tempfile.mkdtemp(prefix="cangku-bench-"))
    registries = make_registries(root, arguments.cangku_cmd)
    bench = Bench(settings=settings, registries=registries, workdir=root, only=only)
    if arguments.floor:
        bench.floor = make_floor(root)
    try:
        page_cache = "as found"
        if arguments.full_page_cache:
            bench.ballast = PageCacheBallast.fill(root, bench.disk_needed_mib())
            page_cache = "filled first and kept full before each push sample (`--full-page-cache`)"
        for registry in bench.push_contenders:
            registry.start()
        info = machine_info(registries)
        info.append(
            f"- page cache: {page_cache}; free memory before the rows: {free_memory_mib()} MiB"
        )
        print("\n".join(info), file=sys.stderr)
        for step in (
            bench.blob_push_rows,
            bench.stop_floor,
            bench.blob_pull_rows,
            bench.manifest_rows,
            bench.image_push_row,
            bench.tags_row,
            bench.versions_rows,
            bench.catalog_row,
            bench.docker_rows,
        ):
            try:
                step()
            except Exception as error:  # keep going: the other workloads still tell something
                traceback.print_exc(file=sys.stderr)
                bench.failures.append(f"{step.__name__}: {error}"[:300])
                for registry in registries:
                    bench.check_alive(registry)
        rss = {r.name: r.rss_peak_kib() for r in registries}
        report = render(bench, info, rss)
        print(report)
        if arguments.output:
            arguments.output.write_text(report)
        return 0
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    finally:
        bench.docker_cleanup()
        for registry in bench.push_contenders:
            registry.stop()
        shutil.rmtree(root, ignore_errors=True)
        log(f"removed {root}")


if __name__ == "__main__":
    sys.exit(main())
