"""What one small request costs the server: CPU per request of each kind, builds side by side.

    .venv/bin/python benchmarks/request_cost.py [--cangku PROGRAM ...] [--auth] [--rounds 3]
        [--requests 2000] [--only KIND,...] [--profile DIR] [--opcodes [--top 20]]

Starts one `cangku serve` per `--cangku` program (default: this tree's `.venv/bin/cangku`;
e.g. `/work/bench-old/.venv/bin/cangku` for an older build) on free loopback ports, each with
its own data directory and without per-request logging, pushes the same small image to each,
then sends loops of each small request kind over one keep-alive connection (http.client: a
lean client, as the image-pusher row of registry_benchmark.py) and reads the server's CPU time
(its threads' schedstat run time, nanoseconds) before and after each loop. Rounds alternate
the servers' order (A, B, B, A, ...). Prints, per kind, the median over rounds of server CPU
µs per request and the load average; the wall time per request is printed too, but on a
shared machine it is noise.

Kinds: `base` (GET /v2/), `blob-head` (HEAD of a blob), `manifest-get`, `manifest-head` (by
tag), `upload-post` (POST .../blobs/uploads/), `upload-put` (PUT ?digest= finishing each
session with a 1 KiB blob: the monolithic upload's second request), `upload-put-1m` (the same
with 1 MiB blobs, a tenth as many), `manifest-put` (a new tag each time, the same manifest),
`tags-page` (GET .../tags/list?n=100&last=..., one page of 100 from the middle of 300 tags,
as registry_benchmark.py's paged tags row asks for; the 300 tags are pushed beforehand).

`--auth` starts the servers with authentication (not `--open`): every request carries a bearer
token for `bench/cost` fetched once from /auth/token with the initial admin's password.
`--opcodes` counts Python bytecode instructions per request instead of CPU time: the servers
run with `benchmarks/opcodes/` first on PYTHONPATH (its sitecustomize counts the event loop
thread's instructions, per function) and, besides the table, each kind's functions with the
most instructions per request are listed per build (first round; for the upload kinds, of
the whole loop: its POSTs and PUTs). A count moves far less with the machine's load than CPU
time (rounds of 300 requests agree within ~1 %: what the event loop does on its own timers
and polls, counted too, grows with the loop's wall time), so a few hundred requests tell
two builds apart where CPU time needs rounds; it misses C code and other threads. A
`--cangku` wrapper that sets PYTHONPATH must keep what is there.

`--profile DIR` records each kind's loop with py-spy (`-f raw`, and `--profile-options`,
default `--nonblocking`), one file per
server and kind, in the first round only; `py-spy` must be on PATH or beside the interpreter.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import http.client
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path

from registry_benchmark import (
    OCI_MANIFEST,
    REPO_ROOT,
    free_loopback_port,
    image_manifest,
)

KINDS = (
    "base",
    "blob-head",
    "manifest-get",
    "manifest-head",
    "upload-post",
    "upload-put",
    "upload-put-1m",
    "manifest-put",
    "tags-page",
)
REPOSITORY = "bench/cost"
# Upload sessions open at once per loop step: below uploads.max_open_per_owner (64).
SESSION_BATCH = 32
# Tags pushed for the `tags-page` kind (t-00000 ...), in addition to `v1`.
LISTED_TAGS = 300


OPCODE_COUNTER = Path(__file__).resolve().parent / "opcodes"


class Server:
    def __init__(
        self, label: str, program: str, root: Path, auth: bool, opcodes: bool = False
    ) -> None:
        self.label = label
        self.port = free_loopback_port()
        self.data = root / label / "data"
        self.data.mkdir(parents=True)
        self.log_path = root / label / "server.log"
        environment = {k: v for k, v in os.environ.items() if not k.startswith("CANGKU_")}
        environment["CANGKU_LOG_LEVEL"] = "warning"
        # --opcodes: where benchmarks/opcodes/sitecustomize.py writes its readings.
        self.opcodes_dir: Path | None = None
        self.readings = 0
        self.functions: dict[str, int] = {}  # Per function, at the last reading.
        self.thread_cpu: dict[str, int] = {}  # Nanoseconds per thread id, last read.
        if opcodes:
            self.opcodes_dir = root / label / "opcodes"
            self.opcodes_dir.mkdir()
            environment["BENCH_OPCODES_DIR"] = str(self.opcodes_dir)
            environment["PYTHONPATH"] = os.pathsep.join(
                filter(None, [str(OPCODE_COUNTER), environment.get("PYTHONPATH")])
            )
        argv = [program, "serve", "--listen", f"127.0.0.1:{self.port}", "--data", str(self.data)]
        if not auth:
            argv.append("--open")
        with self.log_path.open("wb") as log_file:
            self.process = subprocess.Popen(
                argv,
                env=environment,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.headers: dict[str, str] = {}
        self.connection: http.client.HTTPConnection | None = None

    def wait_until_ready(self, auth: bool) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.label} exited:\n{self.log_path.read_text()[-2000:]}")
            with contextlib.suppress(OSError, http.client.HTTPException):
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                connection.request("GET", "/v2/")
                status = connection.getresponse().status
                connection.close()
                if status in (200, 401):
                    break
            time.sleep(0.2)
        else:
            raise RuntimeError(f"{self.label} did not answer in 60 s")
        if auth:
            self.headers = {"Authorization": f"Bearer {self.fetch_token()}"}
        self.connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        if self.opcodes_dir is not None:
            self.process.send_signal(signal.SIGUSR2)  # Start counting.
            # A request between the signals: both pending at once, Python would run the
            # handler of SIGUSR1 (the lower number) first, a reading before the start.
            self.expect(200, "GET", "/v2/")
            self.meter()
            if not self.functions:
                raise RuntimeError(f"{self.label}: no instructions counted (--opcodes)")

    def fetch_token(self) -> str:
        password_file = self.data / "initial-admin-password"
        for _ in range(100):
            if password_file.exists():
                break
            time.sleep(0.1)
        password = password_file.read_text().strip()
        basic = base64.b64encode(f"admin:{password}".encode()).decode()
        query = urllib.parse.urlencode(
            {"service": self.service(), "scope": f"repository:{REPOSITORY}:pull,push"}
        )
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        connection.request(
            "GET", f"/auth/token?{query}", headers={"Authorization": f"Basic {basic}"}
        )
        response = connection.getresponse()
        body = response.read()
        connection.close()
        if response.status != 200:
            raise RuntimeError(f"{self.label}: token: HTTP {response.status} {body[:200]!r}")
        return str(json.loads(body)["token"])

    def service(self) -> str:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        connection.request("GET", "/v2/")
        response = connection.getresponse()
        response.read()
        challenge = response.headers.get("WWW-Authenticate", "")
        connection.close()
        for part in challenge.split(","):
            key, _, value = part.strip().partition("=")
            if key.endswith("service"):
                return value.strip('"')
        raise RuntimeError(f"{self.label}: no service in the challenge {challenge!r}")

    def reconnect(self) -> None:
        """A fresh connection and one unmeasured request: the server closes idle ones."""
        if self.connection is not None:
            self.connection.close()
        self.connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        self.expect(200, "GET", "/v2/")

    def request(
        self, method: str, target: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> http.client.HTTPResponse:
        assert self.connection is not None
        self.connection.request(
            method, target, body=body, headers={**self.headers, **(headers or {})}
        )
        response = self.connection.getresponse()
        response.read()
        return response

    def expect(
        self,
        status: int,
        method: str,
        target: str,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
    ) -> http.client.HTTPResponse:
        response = self.request(method, target, body, headers)
        if response.status != status:
            raise RuntimeError(f"{self.label}: {method} {target}: HTTP {response.status}")
        return response

    def meter(self) -> float:
        """What a loop of requests is measured by, so far: CPU seconds, or with --opcodes
        the main thread's bytecode instructions (a reading of sitecustomize's counts)."""
        if self.opcodes_dir is None:
            return self.cpu_seconds()
        self.readings += 1
        reading = self.opcodes_dir / f"{self.process.pid}-{self.readings}.json"
        self.process.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 30
        while not reading.exists():
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.label}: no opcode reading {reading.name}")
            time.sleep(0.01)
        counts = json.loads(reading.read_text())
        self.functions = counts["functions"]
        return float(counts["total"])

    def cpu_seconds(self) -> float:
        """CPU time of all the server's threads so far: the first field of each thread's
        /proc/PID/task/TID/schedstat (nanoseconds on the CPU), not /proc/PID/stat's 10 ms
        ticks, which are ±4 % of a 3,000-request loop. A thread that has ended (anyio's
        workers end after 10 s idle) keeps its last reading: gone from /proc, its time
        would drop out of the sum. (A thread that starts and ends between two readings is
        missed.)"""
        for schedstat in Path(f"/proc/{self.process.pid}/task").glob("*/schedstat"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                self.thread_cpu[schedstat.parent.name] = int(schedstat.read_text().split()[0])
        return sum(self.thread_cpu.values()) / 1e9

    def stop(self) -> None:
        if self.connection is not None:
            self.connection.close()
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=5)


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def push_blob(server: Server, data: bytes) -> str:
    digest = sha256_digest(data)
    started = server.expect(202, "POST", f"/v2/{REPOSITORY}/blobs/uploads/")
    server.expect(201, "PUT", with_digest(started.headers["Location"], digest), data)
    return digest


def with_digest(location: str, digest: str) -> str:
    parts = urllib.parse.urlsplit(location)
    separator = "&" if parts.query else ""
    return f"{parts.path}?{parts.query}{separator}digest={digest}"


class Fixture:
    """The image every server holds before the loops: a config and one layer, tag `v1`."""

    def __init__(self) -> None:
        self.layer = os.urandom(1024)
        self.config = json.dumps({"architecture": "amd64", "os": "linux"}).encode()
        self.manifest = image_manifest(self.config, [self.layer])
        self.layer_digest = sha256_digest(self.layer)

    def push(self, server: Server, listed_tags: int) -> None:
        push_blob(server, self.config)
        push_blob(server, self.layer)
        for tag in ["v1", *(f"t-{index:05d}" for index in range(listed_tags))]:
            server.expect(
                201,
                "PUT",
                f"/v2/{REPOSITORY}/manifests/{tag}",
                self.manifest,
                {"Content-Type": OCI_MANIFEST},
            )


def measure_kind(
    server: Server, kind: str, count: int, fixture: Fixture, round_index: int
) -> tuple[float, float, int]:
    """(server CPU seconds or instructions: Server.meter, wall seconds, requests) of `count`
    requests of `kind`."""
    accept = {"Accept": OCI_MANIFEST}
    simple: dict[str, Callable[[], object]] = {
        "base": lambda: server.expect(200, "GET", "/v2/"),
        "blob-head": lambda: server.expect(
            200, "HEAD", f"/v2/{REPOSITORY}/blobs/{fixture.layer_digest}"
        ),
        "manifest-get": lambda: server.expect(
            200, "GET", f"/v2/{REPOSITORY}/manifests/v1", headers=accept
        ),
        "manifest-head": lambda: server.expect(
            200, "HEAD", f"/v2/{REPOSITORY}/manifests/v1", headers=accept
        ),
        "tags-page": lambda: server.expect(
            200, "GET", f"/v2/{REPOSITORY}/tags/list?n=100&last=t-{LISTED_TAGS // 3:05d}"
        ),
    }
    if kind in simple:
        call = simple[kind]
        cpu, wall = server.meter(), time.perf_counter()
        for _ in range(count):
            call()
        return server.meter() - cpu, time.perf_counter() - wall, count
    if kind == "manifest-put":
        headers = {"Content-Type": OCI_MANIFEST}
        cpu, wall = server.meter(), time.perf_counter()
        for index in range(count):
            server.expect(
                201,
                "PUT",
                f"/v2/{REPOSITORY}/manifests/r{round_index}-{index}",
                fixture.manifest,
                headers,
            )
        return server.meter() - cpu, time.perf_counter() - wall, count
    # The upload kinds: sessions started in batches, then finished; only the kind's own
    # requests are inside the measured interval.
    size = 1024 * 1024 if kind == "upload-put-1m" else 1024
    if kind == "upload-put-1m":
        count = max(SESSION_BATCH, count // 10)
    total_cpu = total_wall = 0.0
    done = 0
    while done < count:
        batch = min(SESSION_BATCH, count - done)
        blobs = [os.urandom(size) for _ in range(batch)]
        digests = [sha256_digest(blob) for blob in blobs]
        cpu, wall = server.meter(), time.perf_counter()
        locations = [
            server.expect(202, "POST", f"/v2/{REPOSITORY}/blobs/uploads/").headers["Location"]
            for _ in range(batch)
        ]
        if kind == "upload-post":
            total_cpu += server.meter() - cpu
            total_wall += time.perf_counter() - wall
        cpu, wall = server.meter(), time.perf_counter()
        for location, blob, digest in zip(locations, blobs, digests, strict=True):
            server.expect(201, "PUT", with_digest(location, digest), blob)
        if kind != "upload-post":
            total_cpu += server.meter() - cpu
            total_wall += time.perf_counter() - wall
        done += batch
    return total_cpu, total_wall, done


def py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(found).exists():
        raise SystemExit("--profile needs py-spy (pip install py-spy)")
    return found


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number")
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cangku", action="append", help="a cangku program (repeatable)")
    parser.add_argument("--label", action="append", help="a label per --cangku")
    parser.add_argument("--auth", action="store_true", help="bearer tokens instead of --open")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=2000, help="per kind and round")
    parser.add_argument("--only", help="comma-separated kinds")
    parser.add_argument(
        "--opcodes", action="store_true", help="bytecode instructions instead of CPU time"
    )
    parser.add_argument(
        "--top", type=positive, default=20, help="functions per kind in the --opcodes table"
    )
    parser.add_argument("--profile", type=Path, help="directory for py-spy raw profiles")
    parser.add_argument(
        "--profile-options",
        default="--nonblocking",
        help="py-spy record options (e.g. '--gil': only the thread holding the GIL)",
    )
    args = parser.parse_args()
    programs = args.cangku or [str(REPO_ROOT / ".venv/bin/cangku")]
    labels = args.label or [f"build-{i}" for i in range(len(programs))]
    if len(labels) != len(programs):
        parser.error("one --label per --cangku")
    kinds = [k for k in KINDS if args.only is None or k in args.only.split(",")]
    root = Path(tempfile.mkdtemp(prefix="cangku-request-cost-"))
    servers = [
        Server(label, program, root, args.auth, args.opcodes)
        for label, program in zip(labels, programs, strict=True)
    ]
    fixture = Fixture()
    unit = "instructions" if args.opcodes else "µs CPU"
    results: dict[tuple[str, str], list[tuple[float, float]]] = {}
    # --opcodes: instructions per request of each function, first round.
    functions: dict[tuple[str, str], dict[str, float]] = {}
    try:
        for server in servers:
            server.wait_until_ready(args.auth)
            fixture.push(server, LISTED_TAGS if "tags-page" in kinds else 0)
        print(f"load average before: {os.getloadavg()}", flush=True)
        for round_index in range(args.rounds):
            order = servers if round_index % 2 == 0 else list(reversed(servers))
            for kind in kinds:
                for server in order:
                    profiler = None
                    if args.profile is not None and round_index == 0:
                        args.profile.mkdir(parents=True, exist_ok=True)
                        output = args.profile / f"{server.label}-{kind}.txt"
                        command = [py_spy(), "record", *args.profile_options.split()]
                        command += ["-f", "raw", "-r", "250", "-o", str(output)]
                        profiler = subprocess.Popen(
                            [*command, "-p", str(server.process.pid)],
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL,
                        )
                        time.sleep(1.0)
                    server.reconnect()
                    before: dict[str, int] = {}
                    if args.opcodes and round_index == 0:
                        # What came before (the fixture, the reconnect) is not the kind's.
                        server.meter()
                        before = server.functions
                    cpu, wall, count = measure_kind(
                        server, kind, args.requests, fixture, round_index
                    )
                    if args.opcodes and round_index == 0:
                        functions[(server.label, kind)] = {
                            name: (total - before.get(name, 0)) / count
                            for name, total in server.functions.items()
                            if total > before.get(name, 0)
                        }
                    if profiler is not None:
                        profiler.send_signal(signal.SIGINT)
                        profiler.wait(timeout=30)
                    scale = 1 if args.opcodes else 1e6
                    per_request = (cpu / count * scale, wall / count * 1e6)
                    results.setdefault((server.label, kind), []).append(per_request)
                    print(
                        f"round {round_index + 1} {server.label:>10} {kind:>14}: "
                        f"{per_request[0]:8.1f} {unit}, {per_request[1]:8.1f} µs wall",
                        flush=True,
                    )
        print(f"load average after: {os.getloadavg()}")
    finally:
        for server in servers:
            server.stop()
        shutil.rmtree(root, ignore_errors=True)
    mode = "bearer token" if args.auth else "--open"
    measured = "bytecode instructions" if args.opcodes else "server CPU µs"
    print(f"\n{measured} per request, median of {args.rounds} rounds ({mode}; all rounds):\n")
    print("| request | " + " | ".join(labels) + " |")
    print("|---|" + "---:|" * len(labels))
    for kind in kinds:
        cells = []
        for label in labels:
            values = [cpu for cpu, _ in results[(label, kind)]]
            rounds = ", ".join(f"{v:.0f}" for v in values)
            cells.append(f"{statistics.median(values):.0f} ({rounds})")
        print(f"| {kind} | " + " | ".join(cells) + " |")
    for kind in kinds if args.opcodes else []:
        print_functions(kind, labels, functions, args.top)


def print_functions(
    kind: str, labels: list[str], functions: dict[tuple[str, str], dict[str, float]], top: int = 20
) -> None:
    """The functions with the most instructions per request in any build, side by side."""
    names: set[str] = set()
    for label in labels:
        per_function = functions.get((label, kind), {})
        names.update(sorted(per_function, key=per_function.__getitem__, reverse=True)[:top])
    print(f"\n{kind}: bytecode instructions per request, by function (first round)\n")
    print("| function | " + " | ".join(labels) + " |")
    print("|---|" + "---:|" * len(labels))
    last = functions.get((labels[-1], kind), {})
    for name in sorted(names, key=lambda n: -last.get(n, 0)):
        cells = [f"{functions.get((label, kind), {}).get(name, 0):.0f}" for label in labels]
        print(f"| `{name}` | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
