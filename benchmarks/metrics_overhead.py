"""What Prometheus metrics cost: manifest GET req/s with and without them, in one run.

    .venv/bin/python benchmarks/metrics_overhead.py [--seconds 10] [--repetitions 5]

Starts two `cangku serve --open` processes on free loopback ports, identical except for
`CANGKU_METRICS__ENABLED`, pushes the same small image to each, then measures manifest GETs
with wrk (16 connections), alternating which server goes first in each repetition so both see
the same machine state. Besides req/s (sensitive to whatever else the machine runs) it reports
the server's CPU time per request (user + system, from /proc/PID/stat), the steadier measure
on a shared machine. Prints a markdown table (medians) and the overhead; stops every
process it started and removes its temporary files. The server with metrics is scraped once
at the end, to show that the requests were counted.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from registry_benchmark import (
    REPO_ROOT,
    free_loopback_port,
    push_image,
    run_wrk,
    small_image,
    wrk_fetch_script,
)

CONNECTIONS = 16


class Server:
    """A `cangku serve --open` on a free loopback port with its own data directory, without
    per-request logging; `env` adds environment variables, `command` replaces the program
    (the arguments after it stay those of `cangku`), `arguments` go after them (e.g.
    `--config FILE`)."""

    def __init__(
        self,
        name: str,
        root: Path,
        env: dict[str, str] | None = None,
        command: list[str] | None = None,
        arguments: list[str] | None = None,
    ) -> None:
        self.name = name
        self.port = free_loopback_port()
        self.data = root / name
        self.log = (root / f"{name}.log").open("wb")
        environment = {k: v for k, v in os.environ.items() if not k.startswith("CANGKU_")}
        environment["CANGKU_LOG_LEVEL"] = "warning"  # no access line per request, in both
        environment.update(env or {})
        program = command or [str(REPO_ROOT / ".venv/bin/cangku")]
        self.process = subprocess.Popen(
            [
                *program,
                "serve",
                "--open",
                "--listen",
                f"127.0.0.1:{self.port}",
                "--data",
                str(self.data),
                *(arguments or []),
            ],
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=environment,
        )

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_until_ready(self) -> None:
        deadline = time.monotonic() + 30
        with httpx.Client(trust_env=False, timeout=1) as client:
            while time.monotonic() < deadline:
                try:
                    if client.get(f"{self.base}/v2/").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.1)
        raise RuntimeError(f"{self.name} did not start")

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server process so far."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
        return ticks / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)
        self.log.close()


def push_small_image(servers: list[Server], repository: str) -> None:
    """Wait for each server, then push the same kind of small image as `repository:v1`."""
    for server in servers:
        server.wait_until_ready()
        config, layers = small_image(repository.rsplit("/", 1)[-1])
        with httpx.Client(trust_env=False, timeout=30) as client:
            push_image(client, server.base, repository, "v1", config, layers)


def measure_manifest_gets(
    servers: list[Server], repository: str, seconds: int, repetitions: int, root: Path
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """wrk GETs of `repository:v1` on each server, alternating which goes first; per server,
    req/s and server CPU µs per request of every repetition."""
    results: dict[str, list[float]] = {server.name: [] for server in servers}
    cpu: dict[str, list[float]] = {server.name: [] for server in servers}
    for repetition in range(repetitions):
        order = servers if repetition % 2 == 0 else servers[::-1]
        for server in order:
            url = f"{server.base}/v2/{repository}/manifests/v1"
            cpu_before = server.cpu_seconds()
            result = run_wrk(wrk_fetch_script("GET"), url, CONNECTIONS, seconds, root)
            if result.errors:
                raise RuntimeError(f"{server.name}: {result.errors} errors")
            results[server.name].append(result.requests_per_second)
            cpu[server.name].append((server.cpu_seconds() - cpu_before) / result.requests * 1e6)
            print(
                f"{server.name}: {result.requests_per_second:.0f} req/s, "
                f"{cpu[server.name][-1]:.1f} us CPU/request",
                file=sys.stderr,
            )
    return results, cpu


def print_table(
    results: dict[str, list[float]], cpu: dict[str, list[float]], seconds: int, repetitions: int
) -> None:
    """The markdown table of `measure_manifest_gets`'s figures: medians and every run."""
    print(f"manifest GET, wrk c={CONNECTIONS}, {repetitions} x {seconds} s each\n")
    print("| | req/s (median) | runs | server CPU µs/request (median) | runs |")
    print("|---|---:|---|---:|---|")
    for name, values in results.items():
        runs = ", ".join(f"{value:.0f}" for value in values)
        cpu_runs = ", ".join(f"{value:.1f}" for value in cpu[name])
        print(
            f"| {name} | {statistics.median(values):.0f} | {runs} "
            f"| {statistics.median(cpu[name]):.1f} | {cpu_runs} |"
        )


def cost(results: dict[str, list[float]], cpu: dict[str, list[float]], on: str, off: str) -> str:
    """What `on` costs against `off`: in req/s and in CPU per request (medians)."""
    requests = 1 - statistics.median(results[on]) / statistics.median(results[off])
    more_cpu = statistics.median(cpu[on]) / statistics.median(cpu[off]) - 1
    return f"{requests * 100:.1f} % of req/s, {more_cpu * 100:.1f} % more CPU per request"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--repetitions", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cangku-metrics-bench-") as temp:
        root = Path(temp)
        servers = [
            Server("with-metrics", root, {"CANGKU_METRICS__ENABLED": "true"}),
            Server("without-metrics", root, {"CANGKU_METRICS__ENABLED": "false"}),
        ]
        try:
            push_small_image(servers, "bench/metrics")
            results, cpu = measure_manifest_gets(
                servers, "bench/metrics", args.seconds, args.repetitions, root
            )
            with httpx.Client(trust_env=False) as client:
                scraped = client.get(f"{servers[0].base}/metrics").text
            counted = [
                line
                for line in scraped.splitlines()
                if line.startswith("cangku_http_requests_total")
                and 'route="v2.manifest"' in line
                and 'method="GET"' in line
            ]
        finally:
            for server in servers:
                server.stop()
    print_table(results, cpu, args.seconds, args.repetitions)
    print(f"\nmetrics cost: {cost(results, cpu, 'with-metrics', 'without-metrics')}")
    print(f"counted by the server with metrics: {counted}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
