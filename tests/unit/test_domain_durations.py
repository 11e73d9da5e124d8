"""Go-style durations (API.md: 90s, 4h, 1h30m)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from fillprob_operator.domain.durations import format_duration, parse_duration


@pytest.mark.parametrize(
    "text, expected",
    [
        ("90s", timedelta(seconds=90)),
        ("4h", timedelta(hours=4)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("250ms", timedelta(milliseconds=250)),
        ("1.5h", timedelta(minutes=90)),
        ("2m30s", timedelta(seconds=150)),
        ("0s", timedelta(0)),
        ("1h1m1s1ms", timedelta(hours=1, minutes=1, seconds=1, milliseconds=1)),
        ("1500us", timedelta(microseconds=1500)),
        ("1500µs", timedelta(microseconds=1500)),
        ("2000000ns", timedelta(milliseconds=2)),
        ("30m1h", timedelta(minutes=90)),  # Go accepts any order
    ],
)
def test_parse(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["10", "4 hours", "", "h", "-5m", "1d", "4H", " 4h", "1h 30m", ".5h", "1.h"])
def test_parse_rejects_with_a_hint(text: str) -> None:
    with pytest.raises(ValueError, match="must be a duration such as 90s, 4h or 1h30m"):
        parse_duration(text)


@pytest.mark.parametrize(
    "value, text",
    [
        (timedelta(0), "0s"),
        (timedelta(seconds=90), "1m30s"),
        (timedelta(hours=24), "24h"),
        (timedelta(hours=1, minutes=30), "1h30m"),
        (timedelta(milliseconds=250), "250ms"),
        (timedelta(days=2, seconds=1), "48h1s"),
    ],
)
def test_format(value: timedelta, text: str) -> None:
    assert format_duration(value) == text
    assert parse_duration(text) == value


def test_format_refuses_negative() -> None:
    with pytest.raises(ValueError):
        format_duration(timedelta(seconds=-1))
