"""Durations ("1h", "30m", "0") and byte sizes ("10GiB", "500MB") as people write them.

Pure parsing and formatting for the configuration and the command line.
"""

from __future__ import annotations

import math
import re

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_SECONDS_PER_UNIT = {
    "ms": 0.001,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,
    "w": 604800.0,
}

_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([a-z]*)")
_BYTES_PER_UNIT = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "pb": 1000**5,
    "k": 1024,
    "kib": 1024,
    "m": 1024**2,
    "mib": 1024**2,
    "g": 1024**3,
    "gib": 1024**3,
    "t": 1024**4,
    "tib": 1024**4,
    "p": 1024**5,
    "pib": 1024**5,
}


def parse_duration(value: str | float | int) -> float:
    """Seconds in `value`: "90s", "30m", "1h", "1h30m", "7d", "2w", "0"; a number is seconds."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        # Any other type (a list, a mapping from YAML or JSON) is a ValueError too, so that
        # the settings report it as a validation error rather than crash.
        raise ValueError(f"not a duration: {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        text = value.strip().lower().replace(" ", "")
        if text in ("0", "0.0"):
            return 0.0
        if re.fullmatch(r"\d+(?:\.\d+)?", text):
            seconds = float(text)
        else:
            position, seconds = 0, 0.0
            for match in _DURATION_PART.finditer(text):
                if match.start() != position:
                    break
                seconds += float(match[1]) * _SECONDS_PER_UNIT[match[2]]
                position = match.end()
            if position != len(text) or not text:
                raise ValueError(
                    f"not a duration: {value!r} (write e.g. 90s, 30m, 1h, 1h30m, 7d or 0)"
                )
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"a duration must be zero or positive, not {value!r}")
    return seconds


def format_duration(seconds: float) -> str:
    """The shortest exact spelling: 3600 -> "1h", 5400 -> "1h30m", 0 -> "0"."""
    if seconds == 0:
        return "0"
    parts = []
    remaining = seconds
    for unit in ("w", "d", "h", "m", "s"):
        size = _SECONDS_PER_UNIT[unit]
        count = int(remaining // size)
        if count:
            parts.append(f"{count}{unit}")
            remaining -= count * size
    if remaining > 1e-9 or not parts:
        parts.append(f"{remaining:g}s")
    return "".join(parts)


def parse_size(value: str | int) -> int:
    """Bytes in `value`: "10GiB", "1.5G" (powers of 1024), "500MB" (powers of 1000), "1024"."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError(f"not a size: {value!r}")
    if isinstance(value, int):
        size = value
    else:
        match = _SIZE.fullmatch(value.strip().lower())
        if match is None or match[2] not in _BYTES_PER_UNIT:
            raise ValueError(f"not a size: {value!r} (write e.g. 10GiB, 500MiB, 2GB or 1048576)")
        size = int(float(match[1]) * _BYTES_PER_UNIT[match[2]])
    if size < 0:
        raise ValueError(f"a size must be zero or positive, not {value!r}")
    return size


def format_size(size: int) -> str:
    """Bytes for people, in powers of 1024: 1536 -> "1.5 KiB", 10737418240 -> "10.0 GiB"."""
    if size < 1024:
        return f"{size} B"
    amount = float(size)
    for unit in ("KiB", "MiB", "GiB", "TiB", "PiB"):
        amount /= 1024
        if amount < 1024 or unit == "PiB":
            return f"{amount:.1f} {unit}"
    raise AssertionError("unreachable")
