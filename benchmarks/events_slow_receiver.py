"""Does a slow webhook receiver slow pushes? Push latency with and without one, in one run.

    .venv/bin/python benchmarks/events_slow_receiver.py [--pushes 30] [--delay 5]

Starts three `cangku serve --open` processes on free loopback ports, identical except that
one sends every event to a receiver (in this process, on loopback) that takes `--delay`
seconds to answer each request (the events go out with a 10 s attempt timeout, so none
fails), one to a receiver that answers at once (the cost of delivering at all), and one has
no endpoint. Then pushes small images (a new config and layer each, tagged 1.0.N so each
push also moves floating tags: about 5 events) to each in turn, rotating the order, timing
the whole push (two blob uploads and the manifest PUT) and the manifest PUT alone, and
prints a markdown table of medians and 95th percentiles, and how many requests the slow
receiver had taken. Stops what it started.
"""

from __future__ import annotations

import argparse
import base64
import os
import statistics
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
from metrics_overhead import Server
from registry_benchmark import (
    OCI_MANIFEST,
    image_manifest,
    push_small_blob,
    small_image,
)

SECRET = "whsec_" + base64.b64encode(os.urandom(32)).decode()


class SlowReceiver:
    def __init__(self, delay: float) -> None:
        self.received = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["content-length"]))
                receiver.received += 1
                time.sleep(delay)
                self.send_response(204)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def events_server(name: str, root: Path, receiver: str | None) -> Server:
    """metrics_overhead.py's server, with a configuration file sending every event to
    `receiver` (None: no endpoint)."""
    config = root / f"{name}.yaml"
    lines = ["log_level: warning", "events:", "  allow_private: true", "  timeout: 10s"]
    if receiver is not None:
        lines += ["  endpoints:", f"    - url: {receiver}", f"      secret: {SECRET}"]
    config.write_text("\n".join(lines) + "\n")
    return Server(name, root, arguments=["--config", str(config)])


def push(client: httpx.Client, base: str, version: int) -> tuple[float, float]:
    """Seconds for the whole push and for its manifest PUT."""
    config, layers = small_image(f"events-{version}")
    started = time.perf_counter()
    for blob in [config, *layers]:
        push_small_blob(client, base, "bench/events", blob)
    put_started = time.perf_counter()
    response = client.put(
        f"{base}/v2/bench/events/manifests/1.0.{version}",
        content=image_manifest(config, layers),
        headers={"Content-Type": OCI_MANIFEST},
    )
    done = time.perf_counter()
    if response.status_code != 201:
        raise RuntimeError(f"push: {response.status_code} {response.text[:200]}")
    return done - started, done - put_started


def p95(values: list[float]) -> float:
    return sorted(values)[max(int(len(values) * 0.95) - 1, 0)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pushes", type=int, default=30)
    parser.add_argument("--delay", type=float, default=5.0)
    args = parser.parse_args()
    receiver = SlowReceiver(args.delay)
    quick = SlowReceiver(0.0)
    with tempfile.TemporaryDirectory(prefix="cangku-events-bench-") as temp:
        root = Path(temp)
        servers = [
            events_server("slow-receiver", root, receiver.url),
            events_server("fast-receiver", root, quick.url),
            events_server("no-endpoint", root, None),
        ]
        whole: dict[str, list[float]] = {server.name: [] for server in servers}
        put: dict[str, list[float]] = {server.name: [] for server in servers}
        try:
            for server in servers:
                server.wait_until_ready()
            with httpx.Client(trust_env=False, timeout=60) as client:
                for version in range(args.pushes + 1):
                    shift = version % len(servers)
                    order = servers[shift:] + servers[:shift]
                    for server in order:
                        seconds, put_seconds = push(client, server.base, version)
                        if version > 0:  # the first push of each warms up
                            whole[server.name].append(seconds)
                            put[server.name].append(put_seconds)
            taken = receiver.received
        finally:
            for server in servers:
                server.stop()
            receiver.stop()
            quick.stop()
    print(f"{args.pushes} pushes each, rotating; slow receiver delay {args.delay:g} s\n")
    print("| server | push median | push p95 | manifest PUT median | manifest PUT p95 |")
    print("|---|---:|---:|---:|---:|")
    for server in servers:
        name = server.name
        print(
            f"| {name} | {statistics.median(whole[name]) * 1000:.1f} ms "
            f"| {p95(whole[name]) * 1000:.1f} ms "
            f"| {statistics.median(put[name]) * 1000:.1f} ms | {p95(put[name]) * 1000:.1f} ms |"
        )
    print(f"\nrequests the slow receiver had taken by the end: {taken}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
