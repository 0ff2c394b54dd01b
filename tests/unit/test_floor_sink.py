"""The benchmark's floor (`registry_benchmark.py --floor`): the sink stores what the
benchmark's own blob pushes send under the verified digest, refuses a wrong digest, and the
report gives each contender's CPU as a share of the reference's."""

from __future__ import annotations

import hashlib
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import httpx
import pytest

from cangku.storage import filesystem


@pytest.fixture
def sink(floor_sink: ModuleType, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    data = tmp_path / "floor"
    server = floor_sink.FloorSink(("127.0.0.1", 0), data)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", data
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_the_benchmarks_pushes_land_under_their_verified_digest(
    registry_benchmark: ModuleType, sink: tuple[str, Path], tmp_path: Path
) -> None:
    base, data = sink
    blob = registry_benchmark.BlobFile.create(tmp_path / "blob.bin", 3 * 1024 * 1024 + 5)
    with registry_benchmark.new_client() as client:
        mono, _ = registry_benchmark.push_blob_monolithic(client, base, "bench/blobs", blob)
        # 1 MiB PATCHes: the sink appends each one and keeps the hash going between them.
        chunked = registry_benchmark.push_blob_chunked(
            client, base, "bench/blobs", blob, 1024 * 1024
        )
    assert mono != chunked  # each push carries its own suffix
    for digest in (mono, chunked):
        stored = (data / "blobs" / digest.removeprefix("sha256:")).read_bytes()
        assert f"sha256:{hashlib.sha256(stored).hexdigest()}" == digest
        assert len(stored) > blob.size
    assert list((data / "uploads").iterdir()) == []  # every session renamed into blobs/


def test_a_wrong_digest_is_refused_and_nothing_is_stored(sink: tuple[str, Path]) -> None:
    base, data = sink
    with httpx.Client(trust_env=False) as client:
        started = client.post(f"{base}/v2/bench/blobs/blobs/uploads/")
        assert started.status_code == 202
        upload = started.headers["Location"]
        wrong = "sha256:" + hashlib.sha256(b"something else").hexdigest()
        response = client.put(f"{base}{upload}", params={"digest": wrong}, content=b"bytes")
        assert response.status_code == 400
        assert b"DIGEST_INVALID" in response.content
        assert client.put(f"{base}{upload}", params={"digest": wrong}).status_code == 404
    assert list((data / "blobs").iterdir()) == []
    assert list((data / "uploads").iterdir()) == []


def test_a_refused_request_closes_its_connection_so_its_body_is_never_a_request(
    sink: tuple[str, Path],
) -> None:
    base, _ = sink
    port = int(base.rsplit(":", 1)[1])
    smuggled = b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(
            b"POST /v2/bench/blobs/blobs/uploads/ HTTP/1.1\r\nHost: x\r\n"
            + f"Content-Length: {len(smuggled)}\r\n\r\n".encode()
            + smuggled
        )
        answered = b""
        while chunk := connection.recv(65536):  # ends when the sink closes the connection
            answered += chunk
    assert answered.startswith(b"HTTP/1.1 400 ")
    assert b"\r\nConnection: close\r\n" in answered
    assert answered.count(b"HTTP/1.1 ") == 1


def test_a_put_without_a_digest_stores_nothing(sink: tuple[str, Path]) -> None:
    base, data = sink
    with httpx.Client(trust_env=False) as client:
        upload = client.post(f"{base}/v2/bench/blobs/blobs/uploads/").headers["Location"]
        assert client.put(f"{base}{upload}", content=b"bytes").status_code == 400
    assert list((data / "blobs").iterdir()) == []


def test_the_floor_writes_as_cangku_writes(floor_sink: ModuleType) -> None:
    # The comparison's premise: the same bytes per write() into the page cache.
    assert floor_sink.FILE_WRITE == filesystem.FILE_WRITE


def test_the_floor_runs_the_blob_push_rows_only_with_floor(
    registry_benchmark: ModuleType, tmp_path: Path
) -> None:
    bench = registry_benchmark.Bench(
        settings=registry_benchmark.Settings.build(quick=True),
        registries=["reference", "cangku"],
        workdir=tmp_path,
        only=None,
    )
    assert bench.push_contenders == ["reference", "cangku"]
    without = bench.disk_needed_mib()
    bench.floor = registry_benchmark.make_floor(tmp_path)
    assert [r.name for r in bench.push_contenders[2:]] == ["floor"]
    assert bench.disk_needed_mib() > without  # the floor keeps its blobs too


def test_the_report_gives_each_contenders_cpu_as_a_share_of_the_references(
    registry_benchmark: ModuleType,
) -> None:
    row = registry_benchmark.Row(key="mono-64", label="monolithic 64", megabytes=67.1)
    row.values = {"reference": 200.0, "cangku": 400.0, "floor": 600.0}
    row.cpu_ms_per_mb = {"reference": 4.0, "cangku": 2.0, "floor": 1.2}
    skipped = registry_benchmark.Row(key="tags", label="tags list")  # the floor never ran it
    skipped.values = {"reference": 10.0, "cangku": 5.0}
    footnotes: list[str] = []
    lines = registry_benchmark.render_floor([row, skipped], footnotes)
    assert lines[-1] == "| monolithic 64 | 600 | 1.20 | 0.30 / 0.50 |"
    assert not any("tags list" in line for line in lines)
    assert footnotes == []


def test_each_contender_takes_each_place_and_follows_each_other(
    registry_benchmark: ModuleType,
) -> None:
    bench = registry_benchmark.Bench(
        settings=registry_benchmark.Settings.build(quick=True),
        registries=["reference", "cangku"],  # only their order matters here
        workdir=Path("."),
        only=None,
    )
    assert [bench.in_turn(r) for r in range(2)] == [
        ["reference", "cangku"],
        ["cangku", "reference"],
    ]
    three = ["reference", "cangku", "floor"]
    orders = [tuple(bench.in_turn(r, three)) for r in range(6)]
    assert len(set(orders)) == 6  # every order once in six repetitions
    for place in range(3):
        assert sorted(order[place] for order in orders) == sorted(three * 2)


def test_after_the_push_rows_the_floor_stops_and_its_blobs_go(
    registry_benchmark: ModuleType, tmp_path: Path
) -> None:
    bench = registry_benchmark.Bench(
        settings=registry_benchmark.Settings.build(quick=True),
        registries=[],
        workdir=tmp_path,
        only=None,
    )
    floor = bench.floor = registry_benchmark.make_floor(tmp_path)
    floor.start()  # the real sink, in a process of its own, as the benchmark runs it
    try:
        blob = registry_benchmark.BlobFile.create(tmp_path / "blob.bin", 1024 * 1024)
        with registry_benchmark.new_client() as client:
            registry_benchmark.push_blob_monolithic(client, floor.base, "bench/blobs", blob)
        assert any((floor.workdir / "data" / "blobs").iterdir())
        bench.stop_floor()
        assert floor.process.poll() is not None
        assert not (floor.workdir / "data").exists()
    finally:
        floor.stop()
