"""Go-style durations as API.md writes them: `90s`, `4h`, `1h30m`, `250ms`, `1.5h`.

The grammar is the CRD's (`^([0-9]+([.][0-9]+)?(ns|us|µs|ms|s|m|h))+$`): unsigned numbers,
each followed by a unit, no spaces. `format_duration` writes the shortest such string back.
"""

from __future__ import annotations

import re
from datetime import timedelta
from decimal import Decimal

DURATION_PATTERN = r"^([0-9]+([.][0-9]+)?(ns|us|µs|ms|s|m|h))+$"
_WHOLE = re.compile(DURATION_PATTERN)
_PART = re.compile(r"([0-9]+(?:[.][0-9]+)?)(ns|us|µs|ms|s|m|h)")

# Microseconds per unit; nanoseconds are kept as fractions and rounded at the end.
_MICROS_PER_UNIT = {
    "ns": Decimal("0.001"),
    "us": Decimal(1),
    "µs": Decimal(1),
    "ms": Decimal(1_000),
    "s": Decimal(1_000_000),
    "m": Decimal(60_000_000),
    "h": Decimal(3_600_000_000),
}

MESSAGE = "must be a duration such as 90s, 4h or 1h30m: numbers each followed by a unit (h, m, s, ms), no spaces"


def parse_duration(text: str) -> timedelta:
    """`"1h30m"` -> `timedelta(hours=1, minutes=30)`; ValueError (with what to write) otherwise."""
    if not isinstance(text, str) or not _WHOLE.match(text):
        raise ValueError(f"{text!r} {MESSAGE}")
    micros = sum(Decimal(number) * _MICROS_PER_UNIT[unit] for number, unit in _PART.findall(text))
    return timedelta(microseconds=int(micros.to_integral_value()))


def format_duration(value: timedelta) -> str:
    """The shortest Go-style string for `value`: 5400s -> `1h30m`, 0.25s -> `250ms`."""
    micros = value // timedelta(microseconds=1)
    if micros < 0:
        raise ValueError(f"negative duration {value!r}")
    if micros == 0:
        return "0s"
    parts = []
    for unit, size in (("h", 3_600_000_000), ("m", 60_000_000), ("s", 1_000_000), ("ms", 1_000), ("us", 1)):
        count, micros = divmod(micros, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)
