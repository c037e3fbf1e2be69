"""agent/durations.py: the duration strings of the config file and the wire contract."""

from __future__ import annotations

import pytest

from agent.durations import format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("500ms", 0.5),
        ("30s", 30.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("1m30s", 90.0),
        ("1h30m", 5400.0),
        ("1h2m3s4ms", 3723.004),
        ("1.5s", 1.5),
        ("0s", 0.0),
        (" 10s ", 10.0),
        ("45", 45.0),
        ("2.5", 2.5),
    ],
)
def test_parse_duration_accepts_documented_forms(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(("number", "seconds"), [(30, 30.0), (0.25, 0.25), (0, 0.0)])
def test_parse_duration_takes_plain_numbers_as_seconds(number: float, seconds: float) -> None:
    assert parse_duration(number) == seconds


@pytest.mark.parametrize(
    "bad",
    ["", "   ", "10x", "s", "ms", "-5s", "-5", "1m 30s", "30s1", "1s1s", "1.s", "abc", "1d"],
)
def test_parse_duration_rejects_garbage_with_a_message_naming_it(bad: str) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(bad)


@pytest.mark.parametrize("bad", [True, False, -1, -0.5, float("nan"), float("inf"), None, [1]])
def test_parse_duration_rejects_non_durations(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)  # type: ignore[arg-type]


def test_error_message_quotes_the_value() -> None:
    with pytest.raises(ValueError, match="'10x'"):
        parse_duration("10x")


def test_format_duration_is_short() -> None:
    assert format_duration(10.0) == "10s"
    assert format_duration(0.5) == "0.5s"
