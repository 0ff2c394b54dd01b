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
import sys
import tempfile
from pathlib import Path

import httpx
from metrics_overhead import Server, cost, measure_manifest_gets, print_table, push_small_image
from registry_benchmark import REPO_ROOT

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


def launcher(counting: bool) -> list[str]:
    return [str(REPO_ROOT / ".venv/bin/python"), "-c", LAUNCHER.format(counting=counting)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--repetitions", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cangku-pulls-bench-") as temp:
        root = Path(temp)
        servers = [
            Server("counting", root, command=launcher(True)),
            Server("not-counting", root, command=launcher(False)),
        ]
        try:
            push_small_image(servers, "bench/pulls")
            results, cpu = measure_manifest_gets(
                servers, "bench/pulls", args.seconds, args.repetitions, root
            )
            # The counting server did count (flushed every 10 s): its pulls record says so.
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
    print_table(results, cpu, args.seconds, args.repetitions)
    print(f"\npull statistics cost: {cost(results, cpu, 'counting', 'not-counting')}")
    print(f"repository records: {stats}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
