"""Bytecode instructions per function, for `request_cost.py --opcodes`.

Python imports `sitecustomize` at start-up from the first directory of `sys.path` that has
one (the `site` module); request_cost.py puts this directory first on the server's
PYTHONPATH. With `BENCH_OPCODES_DIR` set, SIGUSR2 starts counting the bytecode instructions
the main thread (the event loop's) executes, from its next function call on; each SIGUSR1
writes the counts so far to `BENCH_OPCODES_DIR/<pid>-<n>.json` for the n-th reading (a
temporary file renamed) as `{"total": instructions, "functions": {"file:qualname": n}}`.

A count of instructions moves far less with the machine's load than CPU time, which on a
shared machine moves by several per cent between runs: it tells which build does more
Python work per request, and where. Not exactly: what the event loop runs on its own (timer
ticks, polls, periodic flushes) is counted too and grows with the wall time, which counting
stretches (rounds of 300 requests agree within ~1 %). It misses what C code does (a builtin
call is one instruction) and other threads (SQLite's writer). Counting makes the process
10-50x slower.
"""

from __future__ import annotations

import collections
import json
import os
import re
import signal
import sys
from types import CodeType, FrameType
from typing import Any


def _short(filename: str) -> str:
    """`cangku/server.py`, `uvicorn/...`, `asyncio/events.py`: the path below the source
    root, site-packages or the standard library."""
    for marker in ("/site-packages/", "/src/"):
        if marker in filename:
            return filename.rsplit(marker, 1)[1]
    return re.sub(r"^.*/lib/python3\.\d+/", "", filename)


def _install(directory: str) -> None:
    counts: collections.Counter[CodeType] = collections.Counter()
    readings = 0

    def instruction(frame: FrameType, event: str, arg: Any) -> Any:
        if event == "opcode":
            counts[frame.f_code] += 1
        return instruction

    def call(frame: FrameType, event: str, arg: Any) -> Any:
        frame.f_trace_opcodes = True
        return instruction

    def start(signum: int, frame: FrameType | None) -> None:
        # Python 3.12 turns instruction events on only if a frame asks for them already.
        sys._getframe().f_trace_opcodes = True
        sys.settrace(call)

    def read(signum: int, frame: FrameType | None) -> None:
        nonlocal readings
        sys.settrace(None)  # The reading itself is not counted.
        readings += 1
        functions: collections.Counter[str] = collections.Counter()
        for code, count in counts.items():
            functions[f"{_short(code.co_filename)}:{code.co_qualname}"] += count
        path = os.path.join(directory, f"{os.getpid()}-{readings}.json")
        with open(path + ".tmp", "w") as file:
            json.dump({"total": sum(counts.values()), "functions": functions}, file)
        os.replace(path + ".tmp", path)
        sys.settrace(call)

    signal.signal(signal.SIGUSR2, start)
    signal.signal(signal.SIGUSR1, read)


if os.environ.get("BENCH_OPCODES_DIR"):
    _install(os.environ["BENCH_OPCODES_DIR"])
