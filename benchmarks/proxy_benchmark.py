"""Benchmark the pull-through cache: cangku against CNCF Distribution 2.8.2 in proxy mode.

Run from the repository root:

    .venv/bin/python benchmarks/proxy_benchmark.py             # 3 rounds (~5 minutes)
    .venv/bin/python benchmarks/proxy_benchmark.py --rounds 1  # smoke run

One upstream for both: the reference registry (`docker-registry`) on loopback holding one
image of 5 x 40 MiB random layers. In front of it, each round starts both caches with empty
data directories, interleaved (the order alternates by round, so both see the same machine):
cangku with `CANGKU_PROXY__UPSTREAMS` (the image reached through the default upstream, as
dockerd's `registry-mirrors` would) and Distribution with `proxy.remoteurl`. For each:
- cold pull: the manifest by tag, then the blobs three at a time (as docker and containerd
  do), each blob's status and byte count checked; an untimed pull afterwards verifies every
  digest of what the cache kept (hashing in the client during the timed pulls would
  measure the client). The timed pulls' client (`--client`) is `socket` by default: plain
  HTTP/1.1 GETs on loopback sockets read with `recv_into` into a reused 1 MiB buffer, at
  most three blob GETs at once in threads (the GIL is released while receiving), ~0.18 ms
  of CPU per MiB received. The client shares the 2 cores with the caches, so its CPU counts
  in every wall time: the earlier httpx client (`--client httpx`, ~300 MB/s on one core)
  was slower than both caches' warm answers and measured itself; `--client curl` (one curl
  process per GET, ~0.5 ms/MiB, more than either cache spends warm) still narrows the
  warm ratio towards 1;
- warm pull: the same again, now from the cache, `--warm` times per round (5 by default),
  the median counting: one warm pull of the 200 MiB lasts ~0.1 s, so a single scheduling
  hiccup on the shared machine would move a single sample by half; both caches of a round
  run side by side once cold-pulled, and their warm pulls alternate (A, B, B, A, ...), so
  a change in the machine's load lands on both; the rounds' ratios are printed beside the
  medians';
- 8 concurrent cold pulls (a fresh cache again): the wall time until all eight finished,
  and the blob bytes the upstream sent (from its access log, `http.response.written`) as a
  multiple of the image's size: 1.0 means one transfer per blob.
Times are medians over the rounds (seconds, lower is better); the ratio is
Distribution/cangku, so above 1 means cangku is faster. The cache's CPU seconds (user +
system, from /proc) for the same work are printed beside, a steadier figure on a busy
machine than wall time. Every process started is stopped and every file removed at the end.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx

MiB = 1 << 20
LAYERS = 5
LAYER_BYTES = 40 * MiB
REPO_ROOT = Path(__file__).resolve().parent.parent
CANGKU = REPO_ROOT / ".venv" / "bin" / "cangku"
REFERENCE = "/usr/bin/docker-registry"
NAME = "library/bench"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
ACCEPT = ", ".join(
    [
        OCI_MANIFEST,
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    ]
)
TIMEOUT = httpx.Timeout(300.0, connect=10.0)
RETRIES = 5
# Blob GETs answered with an error (then retried), by cache URL.
FAILURES: dict[str, int] = {}
WRITTEN = re.compile(
    r"http\.request\.method=GET http\.request\.remoteaddr=\S+ "
    r'http\.request\.uri="/v2/[^"]*/blobs/[^"]*".*?http\.response\.written=(\d+)'
)


def log(message: str) -> None:
    print(f"[proxy-bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Server:
    name: str
    command: list[str]
    port: int
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CANGKU_")}
        env.update(self.env)
        with self.log_path.open("ab") as out:
            self.process = subprocess.Popen(
                self.command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        if not answers_v2(self.url):
            raise RuntimeError(f"{self.name} did not start: {self.log_path.read_text()[-2000:]}")

    def cpu_seconds(self) -> float:
        """User + system CPU of the server process (and its reaped children)."""
        assert self.process is not None
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = sum(int(fields[index]) for index in (11, 12, 13, 14))
        return ticks / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.process is None:
            return
        process, self.process = self.process, None
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=15)


def reference_config(path: Path, data: Path, port: int, remote: str | None) -> Path:
    proxy = f"proxy: {{remoteurl: {remote}}}\n" if remote else ""
    path.write_text(
        "version: 0.1\n"
        "log: {level: info, accesslog: {disabled: true}}\n"
        f"storage:\n  filesystem: {{rootdirectory: {data}}}\n  delete: {{enabled: true}}\n"
        f"http: {{addr: 127.0.0.1:{port}}}\n{proxy}"
    )
    return path


def push_image(url: str) -> tuple[str, list[tuple[str, int]]]:
    """Push the 5 x 40 MiB image upstream; its manifest digest and (digest, size) of blobs."""
    blobs: list[tuple[str, int]] = []
    layers = []
    with httpx.Client(timeout=TIMEOUT) as client:
        for index in range(LAYERS + 1):
            data = (
                os.urandom(LAYER_BYTES)
                if index < LAYERS
                else json.dumps(
                    {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers"}}
                ).encode()
            )
            digest = "sha256:" + hashlib.sha256(data).hexdigest()
            start = client.post(f"{url}/v2/{NAME}/blobs/uploads/")
            location = start.headers["location"]
            separator = "&" if "?" in location else "?"
            put = client.put(
                f"{httpx.URL(url).join(location)}{separator}digest={digest}", content=data
            )
            assert put.status_code == 201, put.text
            blobs.append((digest, len(data)))
            layers.append(digest)
        config = blobs[-1]
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {
                    "mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": config[0],
                    "size": config[1],
                },
                "layers": [
                    {
                        "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                        "digest": digest,
                        "size": size,
                    }
                    for digest, size in blobs[:-1]
                ],
            }
        ).encode()
        put = client.put(
            f"{url}/v2/{NAME}/manifests/1",
            content=manifest,
            headers={"Content-Type": OCI_MANIFEST},
        )
        assert put.status_code == 201, put.text
    return "sha256:" + hashlib.sha256(manifest).hexdigest(), blobs


CLIENT = "socket"  # --client: the timed pulls' client: "socket", "curl" or "httpx" (the earlier)
CURL = [
    "curl",
    "--silent",
    "--show-error",
    "--noproxy",
    "*",
    "--max-time",
    "600",
]


def pull(url: str, *, verify: bool = False) -> float:
    """Pull `NAME:1` from `url` with the `CLIENT` (`verify`: always httpx, hashing);
    the wall time in seconds."""
    if verify or CLIENT == "httpx":
        return pull_httpx(url, verify=verify)
    if CLIENT == "socket":
        return pull_socket(url)
    return pull_curl(url)


def pull_curl(url: str) -> float:
    """Pull `NAME:1` from `url` like docker does, with curl: the manifest by tag, then the
    blobs, at most three at once, one curl process per GET (bodies to /dev/null, each
    blob's status and byte count checked; a failed blob GET is tried again, as docker
    does); the wall time in seconds."""
    started = time.perf_counter()
    manifest = subprocess.run(
        [*CURL, "--fail", "--header", f"Accept: {ACCEPT}", f"{url}/v2/{NAME}/manifests/1"],
        capture_output=True,
        check=True,
        timeout=660,
    )
    document = json.loads(manifest.stdout)
    blobs = [document["config"], *document["layers"]]

    def fetch(blob: dict[str, object]) -> None:
        path = f"{url}/v2/{NAME}/blobs/{blob['digest']}"
        argv = [*CURL, "--output", "/dev/null", "--write-out", "%{http_code} %{size_download}"]
        for _ in range(RETRIES):
            done = subprocess.run([*argv, path], capture_output=True, text=True, timeout=660)
            if done.returncode == 0 and done.stdout.split() == ["200", str(blob["size"])]:
                return
            FAILURES[url] = FAILURES.get(url, 0) + 1
        raise RuntimeError(f"{path}: rc {done.returncode}, {done.stdout!r} {done.stderr[-200:]}")

    with ThreadPoolExecutor(3) as pool:
        list(pool.map(fetch, blobs))
    return time.perf_counter() - started


def answers_v2(url: str, seconds: float = 30) -> bool:
    """Whether the registry at `url` answers `GET /v2/` with 200 within `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/v2/", timeout=1).status_code == 200:
                return True
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    return False


def http_get(url: str, buffer: bytearray, accept: str | None = None) -> tuple[int, int, bytes]:
    """One HTTP/1.1 GET on its own loopback connection, read with `recv_into` into the
    caller's `buffer` (the bytes are received, never kept, except a body of at most 64 KiB,
    the manifest, which is returned): (status, Content-Length, small body). Only what a
    registry answers is handled: a Content-Length body, no chunked encoding, no redirect."""
    parsed = httpx.URL(url)
    target = parsed.raw_path.decode("ascii")
    extra = f"Accept: {accept}\r\n" if accept else ""
    with socket.create_connection((parsed.host, parsed.port or 80), timeout=600) as sock:
        sock.sendall(
            f"GET {target} HTTP/1.1\r\nHost: {parsed.netloc.decode()}\r\n{extra}"
            "Connection: close\r\n\r\n".encode("ascii")
        )
        view = memoryview(buffer)
        head = bytearray()
        while b"\r\n\r\n" not in head:
            received = sock.recv_into(view)
            if not received:
                raise RuntimeError(f"{url}: the connection closed in the headers")
            head += view[:received]
        header, _, rest = bytes(head).partition(b"\r\n\r\n")
        lines = header.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        fields = dict(line.lower().split(":", 1) for line in lines[1:] if ":" in line)
        if "content-length" not in fields:
            raise RuntimeError(f"{url}: {status} without a Content-Length")
        length = int(fields["content-length"])
        small = bytearray(rest) if length <= 64 * 1024 else bytearray()
        got = len(rest)
        while got < length:
            received = sock.recv_into(view)
            if not received:
                break
            if length <= 64 * 1024:
                small += view[:received]
            got += received
        if got != length:
            raise RuntimeError(f"{url}: {got} of {length} bytes")
        return status, length, bytes(small)


def pull_socket(url: str) -> float:
    """Pull `NAME:1` from `url` like docker does, with `http_get` (plain sockets, a 1 MiB
    `recv_into` buffer per connection, the GIL released while receiving): the manifest by
    tag, then the blobs, at most three at once, each blob's status and byte count checked;
    a failed blob GET is tried again. The wall time in seconds."""
    started = time.perf_counter()
    status, _, body = http_get(f"{url}/v2/{NAME}/manifests/1", bytearray(MiB), ACCEPT)
    assert status == 200, body
    document = json.loads(body)
    blobs = [document["config"], *document["layers"]]

    def fetch(blob: dict[str, object]) -> None:
        path = f"{url}/v2/{NAME}/blobs/{blob['digest']}"
        buffer = bytearray(MiB)
        for _ in range(RETRIES):
            try:
                status, length, _ = http_get(path, buffer)
            except (OSError, RuntimeError):
                status, length = 0, 0
            if status == 200 and length == blob["size"]:
                return
            FAILURES[url] = FAILURES.get(url, 0) + 1
        raise RuntimeError(f"{path}: {status}, {length} bytes")

    with ThreadPoolExecutor(3) as pool:
        list(pool.map(fetch, blobs))
    return time.perf_counter() - started


def pull_httpx(url: str, *, verify: bool = False) -> float:
    """Pull `NAME:1` from `url` like docker does (the manifest, then three blobs at a time)
    with httpx in this process; the wall time in seconds. Counts the bytes of each blob
    against its size; `verify` also hashes them."""
    started = time.perf_counter()
    with httpx.Client(timeout=TIMEOUT) as client:
        response = client.get(f"{url}/v2/{NAME}/manifests/1", headers={"Accept": ACCEPT})
        assert response.status_code == 200, response.text
        document = json.loads(response.content)
        blobs = [document["config"], *document["layers"]]

        def fetch(blob: dict[str, object]) -> None:
            path = f"{url}/v2/{NAME}/blobs/{blob['digest']}"
            for _ in range(RETRIES):
                hasher = hashlib.sha256()
                received = 0
                with client.stream("GET", path) as got:
                    if got.status_code != 200:
                        # As docker does: a failed layer download is tried again.
                        FAILURES[url] = FAILURES.get(url, 0) + 1
                        continue
                    for chunk in got.iter_raw(MiB):
                        received += len(chunk)
                        if verify:
                            hasher.update(chunk)
                    break
            assert received == blob["size"], f"{path}: {received} bytes"
            if verify:
                assert f"sha256:{hasher.hexdigest()}" == blob["digest"], f"{path}: wrong bytes"

        with ThreadPoolExecutor(3) as pool:
            list(pool.map(fetch, blobs))
    return time.perf_counter() - started


def upstream_blob_bytes(upstream: Server) -> int:
    return sum(int(m) for m in WRITTEN.findall(upstream.log_path.read_text(errors="replace")))


def cache(kind: str, root: Path, upstream: Server) -> Server:
    port = free_port()
    data = Path(tempfile.mkdtemp(prefix=f"{kind}-", dir=root))
    if kind == "cangku":
        upstreams = [{"name": "docker.io", "url": upstream.url, "default": True}]
        return Server(
            kind,
            [str(CANGKU), "serve", "--listen", f"127.0.0.1:{port}", "--data", str(data), "--open"],
            port,
            data.with_suffix(".log"),
            {"CANGKU_PROXY__UPSTREAMS": json.dumps(upstreams)},
        )
    config = reference_config(data.with_suffix(".yml"), data, port, upstream.url)
    return Server(kind, [REFERENCE, "serve", str(config)], port, data.with_suffix(".log"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--client",
        choices=("curl", "socket", "httpx"),
        default="socket",
        help="the timed pulls' client (httpx: the earlier one, slower than both caches warm)",
    )
    parser.add_argument(
        "--warm", type=int, default=5, help="warm pulls per round (their median counts)"
    )
    parser.add_argument(
        "--skip-concurrent", action="store_true", help="only the cold and warm pulls"
    )
    arguments = parser.parse_args()
    global CLIENT
    CLIENT = arguments.client
    root = Path(tempfile.mkdtemp(prefix="cangku-proxy-bench-"))
    servers: list[Server] = []
    results: dict[str, dict[str, list[float]]] = {
        kind: {
            "cold": [],
            "warm": [],
            "cold8": [],
            "bytes8": [],
            "cpu_cold": [],
            "cpu_warm": [],
            "failed8": [],
        }
        for kind in ("cangku", "distribution")
    }
    try:
        upstream_port = free_port()
        upstream_data = root / "upstream"
        upstream = Server(
            "upstream",
            [
                REFERENCE,
                "serve",
                str(reference_config(root / "upstream.yml", upstream_data, upstream_port, None)),
            ],
            upstream_port,
            root / "upstream.log",
        )
        servers.append(upstream)
        upstream.start()
        log(f"pushing {LAYERS} x {LAYER_BYTES // MiB} MiB upstream")
        _, blobs = push_image(upstream.url)
        image_bytes = sum(size for _, size in blobs)
        for round_number in range(arguments.rounds):
            kinds = ["cangku", "distribution"]
            if round_number % 2:
                kinds.reverse()
            caches: dict[str, Server] = {}
            for kind in kinds:
                server = caches[kind] = cache(kind, root, upstream)
                servers.append(server)
                server.start()
                cpu = server.cpu_seconds()
                results[kind]["cold"].append(pull(server.url))
                results[kind]["cpu_cold"].append(server.cpu_seconds() - cpu)
            # Warm pulls are short (~0.1 s): several, the median counting, the two caches'
            # pulls alternating (A, B, B, A, ...) so that a change in the machine's load
            # lands on both rather than on one cache's block of pulls.
            warm_times: dict[str, list[float]] = {kind: [] for kind in kinds}
            warm_cpu = dict.fromkeys(kinds, 0.0)
            for repetition in range(arguments.warm):
                for kind in kinds if repetition % 2 == 0 else kinds[::-1]:
                    server = caches[kind]
                    cpu = server.cpu_seconds()
                    warm_times[kind].append(pull(server.url))
                    warm_cpu[kind] += server.cpu_seconds() - cpu
            for kind in kinds:
                server = caches[kind]
                pull(server.url, verify=True)  # what the cache kept is right
                server.stop()
                row = results[kind]
                row["warm"].append(statistics.median(warm_times[kind]))
                row["cpu_warm"].append(warm_cpu[kind] / arguments.warm)
                cold8 = sent = failed = 0.0
                if not arguments.skip_concurrent:
                    server = cache(kind, root, upstream)
                    servers.append(server)
                    server.start()
                    before = upstream_blob_bytes(upstream)
                    started = time.perf_counter()
                    with ThreadPoolExecutor(8) as pool:
                        list(pool.map(pull, [server.url] * 8))
                    cold8 = time.perf_counter() - started
                    sent = upstream_blob_bytes(upstream) - before
                    failed = FAILURES.get(server.url, 0)
                    pull(server.url, verify=True)
                    server.stop()
                    row["cold8"].append(cold8)
                    row["bytes8"].append(sent / image_bytes)
                    row["failed8"].append(failed)
                log(
                    f"round {round_number + 1} {kind}: cold {row['cold'][-1]:.3f}s "
                    f"(cpu {row['cpu_cold'][-1]:.2f}s) warm {row['warm'][-1]:.3f}s "
                    f"(cpu {row['cpu_warm'][-1]:.3f}s) 8xcold {cold8:.2f}s "
                    f"upstream {sent / image_bytes:.2f}x the image, {failed} failed blob GETs"
                )
        print(f"client: {CLIENT}, warm pulls per round: {arguments.warm}")
        print(table(results, arguments.rounds))
    finally:
        for server in servers:
            server.stop()
        shutil.rmtree(root, ignore_errors=True)


def table(results: dict[str, dict[str, list[float]]], rounds: int) -> str:
    def median(kind: str, key: str) -> float:
        return statistics.median(results[kind][key] or [float("nan")])

    lines = [
        f"| {LAYERS} x {LAYER_BYTES // MiB} MiB image, median of {rounds} | cangku | "
        "Distribution (proxy) | ratio (Distribution / cangku) |",
        "| --- | --- | --- | --- |",
    ]
    for key, label in (
        ("cold", "cold pull, s"),
        ("cpu_cold", "cold pull, cache CPU s"),
        ("warm", "warm pull, s"),
        ("cpu_warm", "warm pull, cache CPU s"),
        ("cold8", "8 concurrent cold pulls, s"),
    ):
        ours, theirs = median("cangku", key), median("distribution", key)
        rounds_ratios = ", ".join(
            f"{theirs_round / ours_round:.2f}"
            for ours_round, theirs_round in zip(
                results["cangku"][key], results["distribution"][key], strict=False
            )
        )
        lines.append(
            f"| {label} | {ours:.3f} | {theirs:.3f} | {theirs / ours:.2f}x "
            f"(per round: {rounds_ratios or '-'}) |"
        )
    ours, theirs = median("cangku", "bytes8"), median("distribution", "bytes8")
    lines.append(
        f"| 8 concurrent cold pulls, upstream blob bytes / image | {ours:.2f} | {theirs:.2f} | — |"
    )
    lines.append(
        f"| 8 concurrent cold pulls, failed blob GETs (retried) | {median('cangku', 'failed8'):.0f}"
        f" | {median('distribution', 'failed8'):.0f} | — |"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
