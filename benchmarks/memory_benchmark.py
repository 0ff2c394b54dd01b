"""Peak server memory while pushing and pulling a 2 GiB layer: cangku beside the reference.

    .venv/bin/python benchmarks/memory_benchmark.py [--size-mib 2048]

Starts both registries (fresh data directories on loopback), pushes one blob of the given
size monolithically and once more in 64 MiB chunks, pulls it with curl, and prints each
server's peak resident memory (VmHWM) after every step as a markdown table. The goal is that
cangku stays under 150 MB: bodies stream, nothing holds a whole blob.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from registry_benchmark import (
    DEFAULT_CANGKU_CMD,
    BlobFile,
    MiB,
    curl_pull,
    log,
    make_registries,
    new_client,
    push_blob_chunked,
    push_blob_monolithic,
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=2048)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="cangku-memory-"))
    registries = make_registries(root, DEFAULT_CANGKU_CMD)
    try:
        log(f"writing a {args.size_mib} MiB random blob")
        blob = BlobFile.create(root / "blob.bin", args.size_mib * MiB)
        rows: dict[str, dict[str, float]] = {}
        for registry in registries:
            registry.start()
            peaks = rows.setdefault(registry.name, {})
            peaks["idle"] = registry.rss_peak_kib()[1] / 1024
            with new_client() as client:
                digest, size = push_blob_monolithic(client, registry.base, "memory/blob", blob)
                peaks["monolithic push"] = registry.rss_peak_kib()[1] / 1024
                push_blob_chunked(client, registry.base, "memory/blob", blob, 64 * MiB)
                peaks["chunked push"] = registry.rss_peak_kib()[1] / 1024
            curl_pull(f"{registry.base}/v2/memory/blob/blobs/{digest}", 1, size)
            peaks["pull"] = registry.rss_peak_kib()[1] / 1024
            log(f"{registry.name}: {peaks}")
            registry.stop()
        print(f"| peak RSS (MiB) after | {' | '.join(rows)} |")
        print(f"|---|{'---:|' * len(rows)}")
        for step in ("idle", "monolithic push", "chunked push", "pull"):
            cells = " | ".join(f"{rows[name][step]:.0f}" for name in rows)
            print(f"| {step} ({args.size_mib} MiB blob) | {cells} |")
    finally:
        for registry in registries:
            registry.stop()
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
