"""Issue 20's growth table: the manifest PUT time as a repository's versions accumulate.

Run from the repository root:

    .venv/bin/python benchmarks/version_growth.py                  # 3,000 versions
    .venv/bin/python benchmarks/version_growth.py --versions 1000 --plain

Starts cangku (`--open`, a fresh temporary data directory; `--cangku-cmd` as in
registry_benchmark.py, e.g. to run it on PostgreSQL), pushes versions 0.0.0, 0.0.1, ... one
after another into one repository, each a distinct small image manifest, as a busy CI would,
and prints the median PUT time per hundred versions. `--plain` pushes build-0, build-1, ...
instead (no floating tags), the baseline. Stops the server and removes its data at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from registry_benchmark import (
    DEFAULT_CANGKU_CMD,
    OCI_MANIFEST,
    Registry,
    expect,
    free_loopback_port,
    image_manifest,
    new_client,
    push_image,
    small_image,
)

BUCKETS = (0, 500, 1000, 2000, 2900)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--versions", type=int, default=3000)
    parser.add_argument("--plain", action="store_true", help="build-N tags, not versions")
    parser.add_argument(
        "--cangku-cmd", default=os.environ.get("CANGKU_BENCH_CMD", DEFAULT_CANGKU_CMD)
    )
    arguments = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="cangku-growth-"))
    port = free_loopback_port()
    data = root / "data"
    data.mkdir()
    argv = shlex.split(arguments.cangku_cmd.format(port=port, data=data))
    registry = Registry("cangku", argv, port, root)
    try:
        registry.start()
        config, layers = small_image("growth")
        repo = "bench/growth"
        timings: list[float] = []
        with new_client() as client:
            push_image(client, registry.base, repo, "base", config, layers)
            document = json.loads(image_manifest(config, layers))
            for index in range(arguments.versions):
                tag = (
                    f"build-{index}"
                    if arguments.plain
                    else f"{index // 100}.{index // 10 % 10}.{index % 10}"
                )
                document["annotations"] = {"bench": tag}
                body = json.dumps(document, separators=(",", ":")).encode()
                started = time.perf_counter()
                expect(
                    client.put(
                        f"{registry.base}/v2/{repo}/manifests/{tag}",
                        content=body,
                        headers={"Content-Type": OCI_MANIFEST},
                    ),
                    201,
                )
                timings.append((time.perf_counter() - started) * 1000)
        kind = "plain tags" if arguments.plain else "versions"
        print(f"| {kind} already in the repository | median manifest PUT |")
        print("|---|---:|")
        for start in BUCKETS:
            if start + 100 <= len(timings):
                median = statistics.median(timings[start : start + 100])
                print(f"| {start:,}-{start + 99:,} | {median:.1f} ms |")
        return 0
    finally:
        registry.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
