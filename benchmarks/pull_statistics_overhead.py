"""What pull statistics cost (issue 17): manifest GET req/s with and without counting, in one run.

    .venv/bin/python benchmarks/pull_statistics_overhead.py [--seconds 10] [--repetitions 5]

Like metrics_overhead.py: two `cangku serve --open` processes on free loopback ports, both
started through the same small launcher; in one the launcher first replaces the manifest
service's pull-counting wrapper (`registry.pulls.CountedManifests`, installed by
`Registry.repository`) with the identity, so that server counts nothing and is otherwise the
same code. wrk GETs one small manifest by tag (16 connections), alternating which server goes
first; reports req/s and server CPU per request (medians) and the overhead.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx
from metrics_overhead import CONNECTIONS
from metrics_overhead import Server as _Server
from registry_benchmark import (
    REPO_ROOT,
    free_loopback_port,
    push_image,
    run_wrk,
    small_image,
    wrk_fetch_script,
)

# The same launcher for both; `{counting}` decides whether the wrapper stays.
LAUNCHER = """
import sys
import cangku.registry.service as service
if not {counting}:
    service.CountedManifests = lambda inner, *rest: inner
from cangku.cli import main
sys.argv[0] = "cangku"
sys.exit(main())
"""


class Server(_Server):
    def __init__(self, name: str, counting: bool, root: Path) -> None:
        self.name = name
        self.port = free_loopback_port()
        self.data = root / name
        self.log = (root / f"{name}.log").open("wb")
        env = {k: v for k, v in os.environ.items() if not k.startswith("CANGKU_")}
        env["CANGKU_LOG_LEVEL"] = "warning"  # no access line per request, in both
        self.process = subprocess.Popen(
            [
                str(REPO_ROOT / ".venv/bin/python"),
                "-c",
                LAUNCHER.format(counting=counting),
                "serve",
                "--open",
                "--listen",
                f"127.0.0.1:{self.port}",
                "--data",
                str(self.data),
            ],
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=env,
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--repetitions", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cangku-pulls-bench-") as temp:
        root = Path(temp)
        servers = [Server("counting", True, root), Server("not-counting", False, root)]
        try:
            for server in servers:
                server.wait_until_ready()
                config, layers = small_image("pulls")
                with httpx.Client(trust_env=False, timeout=30) as client:
                    push_image(client, server.base, "bench/pulls", "v1", config, layers)
            results: dict[str, list[float]] = {server.name: [] for server in servers}
            cpu: dict[str, list[float]] = {server.name: [] for server in servers}
            for repetition in range(args.repetitions):
                order = servers if repetition % 2 == 0 else servers[::-1]
                for server in order:
                    url = f"{server.base}/v2/bench/pulls/manifests/v1"
                    cpu_before = server.cpu_seconds()
                    result = run_wrk(wrk_fetch_script("GET"), url, CONNECTIONS, args.seconds, root)
                    if result.errors:
                        raise RuntimeError(f"{server.name}: {result.errors} errors")
                    results[server.name].append(result.requests_per_second)
                    cpu[server.name].append(
                        (server.cpu_seconds() - cpu_before) / result.requests * 1e6
                    )
                    print(
                        f"{server.name}: {result.requests_per_second:.0f} req/s, "
                        f"{cpu[server.name][-1]:.1f} us CPU/request",
                        file=sys.stderr,
                    )
            # The counting server did count (flushed every 10 s): its repository page says so.
            with httpx.Client(trust_env=False, timeout=30) as client:
                stats = {
                    server.name: client.get(
                        f"{server.base}/api/v1/repositories/bench/pulls/pulls"
                    ).json()
                    for server in servers
                }
        finally:
            for server in servers:
                server.stop()
    on, off = statistics.median(results["counting"]), statistics.median(results["not-counting"])
    print(f"manifest GET, wrk c={CONNECTIONS}, {args.repetitions} x {args.seconds} s each\n")
    print("| | req/s (median) | runs | server CPU µs/request (median) | runs |")
    print("|---|---:|---|---:|---|")
    for name, values in results.items():
        runs = ", ".join(f"{value:.0f}" for value in values)
        cpu_runs = ", ".join(f"{value:.1f}" for value in cpu[name])
        print(
            f"| {name} | {statistics.median(values):.0f} | {runs} "
            f"| {statistics.median(cpu[name]):.1f} | {cpu_runs} |"
        )
    cpu_on, cpu_off = statistics.median(cpu["counting"]), statistics.median(cpu["not-counting"])
    print(f"\npull statistics cost: {(1 - on / off) * 100:.1f} % of req/s, ", end="")
    print(f"{(cpu_on / cpu_off - 1) * 100:.1f} % more CPU per request")
    print(f"repository records: {stats}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
