"""Log formats of `cangku serve` (observability.py): text or one JSON object per line."""

from __future__ import annotations

import io
import itertools
import json
import logging
import os
import re
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, cast

import pytest

from cangku.config import Settings
from cangku.observability import (
    JsonFormatter,
    ObservedApp,
    RequestIdFilter,
    TextFormatter,
    configure_logging,
)
from cangku.registry.context import REQUEST_ID


def record(name: str, message: str, **extra: object) -> logging.LogRecord:
    made = logging.LogRecord(name, logging.INFO, __file__, 1, message, None, None)
    for key, value in extra.items():
        setattr(made, key, value)
    RequestIdFilter().filter(made)
    return made


def test_json_lines_carry_the_fields_of_the_access_line() -> None:
    fields = {"method": "GET", "path": "/v2/", "status": 200, "bytes": 2, "duration_ms": 0.4}
    line = JsonFormatter().format(
        record(
            "cangku.access",
            "GET /v2/ 200 2 0.4ms",
            access={**fields, "user": "-"},
            request_id="0123456789abcdef",
        )
    )
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["logger"] == "cangku.access"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", entry["time"])
    assert entry["level"] == "INFO"
    assert entry["request_id"] == "0123456789abcdef"
    assert entry["message"] == "GET /v2/ 200 2 0.4ms"
    assert {key: entry[key] for key in fields} == fields
    assert entry["user"] == "-"


def test_records_written_during_a_request_carry_its_id_in_both_formats() -> None:
    token = REQUEST_ID.set("feedfacecafebeef")
    try:
        during = record("cangku", "something happened\non two lines")
    finally:
        REQUEST_ID.reset(token)
    outside = record("cangku", "at startup")
    assert TextFormatter().format(during).endswith(" id=feedfacecafebeef")
    assert " id=" not in TextFormatter().format(outside)
    entry = json.loads(JsonFormatter().format(during))
    assert entry["request_id"] == "feedfacecafebeef"
    assert entry["message"] == "something happened\non two lines"
    assert json.loads(JsonFormatter().format(outside))["request_id"] is None


@pytest.fixture
def root_handlers() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_configure_logging_installs_one_handler_of_its_own(
    root_handlers: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    configure_logging(Settings(log_format="text"))
    configure_logging(Settings(log_format="json"))
    ours = [h for h in logging.getLogger().handlers if h.get_name() == "cangku"]
    assert len(ours) == 1 and isinstance(ours[0].formatter, JsonFormatter)
    logging.getLogger("cangku").warning("hello")
    assert json.loads(stream.getvalue().splitlines()[-1])["message"] == "hello"


def test_the_access_line_leaves_out_the_query_string() -> None:
    captured: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            captured.append(record)

    logger = logging.getLogger("cangku.access")
    handler = Keep()
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        scope = {"method": "GET", "path": "/auth/token", "query_string": b"password=hunter2"}
        ObservedApp._log_access(scope, {"status": 200, "bytes": 5}, 0.001, "ab" * 8)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(logging.NOTSET)
    (line,) = captured
    assert "hunter2" not in line.getMessage()
    assert "hunter2" not in JsonFormatter().format(line)


def test_serving_logs_no_process_or_thread_lookups_per_record(
    root_handlers: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    for flag in ("logProcesses", "logThreads", "logMultiprocessing"):
        monkeypatch.setattr(logging, flag, getattr(logging, flag))  # Restored afterwards.
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    configure_logging(Settings(log_format="text"))
    looked_up: list[str] = []

    def getpid() -> int:
        looked_up.append("getpid")
        return 1

    monkeypatch.setattr("os.getpid", getpid)
    logging.getLogger("cangku.access").warning("GET /v2/ 200")
    assert looked_up == []  # A getpid syscall per record (the access line: per request).
    assert stream.getvalue().rstrip().endswith("cangku.access GET /v2/ 200")


async def request_ids(app: ObservedApp, count: int) -> list[str]:
    ids = []

    async def answer(scope: object, receive: object, send: Callable[..., Awaitable[None]]) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def send(message: dict[str, object]) -> None:
        if message["type"] == "http.response.start":
            headers = dict(cast(list[tuple[bytes, bytes]], message["headers"]))
            ids.append(headers[b"x-request-id"].decode())

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": b""}

    app.app = answer
    for _ in range(count):
        scope = {"type": "http", "method": "GET", "path": "/v2/", "query_string": b""}
        await app(scope, receive, send)  # type: ignore[arg-type]
    return ids


async def test_request_ids_are_unique_without_a_random_draw_each(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_draws(size: int) -> bytes:
        raise AssertionError("a getrandom syscall per request")

    monkeypatch.setattr("os.urandom", no_draws)
    ids = await request_ids(ObservedApp(cast(Any, None)), 1000)
    assert all(re.fullmatch(r"[0-9a-f]{16}", one) for one in ids)  # The format as before.
    assert len(set(ids)) == 1000
    assert len({one[:8] for one in ids}) == 1  # One process, one prefix.
    # Not a plain count: consecutive ids do not tell clients how many requests came between.
    steps = {(int(b[8:], 16) - int(a[8:], 16)) % 2**32 for a, b in itertools.pairwise(ids)}
    assert steps != {1}


def test_a_forked_child_draws_request_ids_of_its_own() -> None:
    from cangku import observability

    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child
        os.write(write, observability._request_ids.prefix.encode())
        os._exit(0)
    os.close(write)
    theirs = os.read(read, 64).decode()
    os.close(read)
    os.waitpid(child, 0)
    assert re.fullmatch(r"[0-9a-f]{8}", theirs)
    assert theirs != observability._request_ids.prefix
