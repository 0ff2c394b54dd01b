"""Log formats of `cangku serve` (observability.py): text or one JSON object per line."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator

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
