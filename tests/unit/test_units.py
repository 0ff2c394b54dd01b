"""Durations and sizes as written in the configuration and on the command line."""

from __future__ import annotations

import pytest

from cangku.content.units import format_duration, format_size, parse_duration, parse_size


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("0", 0.0),
        ("0s", 0.0),
        ("90s", 90.0),
        ("30m", 1800.0),
        ("1h", 3600.0),
        ("24h", 86400.0),
        ("1h30m", 5400.0),
        ("7d", 604800.0),
        ("2w", 1209600.0),
        ("1.5h", 5400.0),
        ("250ms", 0.25),
        (" 1H ", 3600.0),
        ("45", 45.0),
        (60, 60.0),
        (0.5, 0.5),
    ],
)
def test_durations_parse_to_seconds(text: str | float, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "text", ["", "h", "1x", "1h-", "-1h", "1 hour", "h1", "1h30", "1e3s", "nan", "inf"]
)
def test_malformed_durations_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_negative_or_boolean_durations_are_refused() -> None:
    with pytest.raises(ValueError):
        parse_duration(-1)
    with pytest.raises(ValueError):
        parse_duration(True)


@pytest.mark.parametrize("value", [[1], {"h": 1}, None, b"1h"])
def test_values_of_other_types_are_a_value_error_not_a_crash(value: object) -> None:
    # From YAML or JSON settings: the settings must report a validation error.
    with pytest.raises(ValueError):
        parse_duration(value)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        parse_size(value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0"), (3600, "1h"), (5400, "1h30m"), (86400, "1d"), (90, "1m30s"), (0.25, "0.25s")],
)
def test_durations_format_back_to_what_parses(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("1024", 1024),
        ("0", 0),
        ("10GiB", 10 * 1024**3),
        ("10gib", 10 * 1024**3),
        ("1.5G", 3 * 1024**3 // 2),
        ("500MiB", 500 * 1024**2),
        ("500MB", 500 * 1000**2),
        ("2 GB", 2 * 1000**3),
        ("1k", 1024),
        ("12B", 12),
        (4096, 4096),
    ],
)
def test_sizes_parse_to_bytes(text: str | int, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "GiB", "10 gigs", "-1GiB", "1,5G", "ten"])
def test_malformed_sizes_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


@pytest.mark.parametrize(
    ("size", "text"),
    [(0, "0 B"), (1023, "1023 B"), (1536, "1.5 KiB"), (10 * 1024**3, "10.0 GiB")],
)
def test_sizes_format_for_people(size: int, text: str) -> None:
    assert format_size(size) == text
