"""Go-style durations as API.md writes them: `90s`, `4h`, `1h30m`, `250ms`, `1.5h`.

The one duration parser of the package. Two grammars share it:
- the CRD's (`DURATION_PATTERN`, `^([0-9]+([.][0-9]+)?(ns|us|µs|ms|s|m|h))+$`): unsigned
  numbers, each followed by a unit, no spaces; `parse_duration` reads spec fields with it;
- Go's `time.ParseDuration` (a sign, `.5h`, `5.h`, a bare `0`, `μs` with the Greek mu), which
  Kubernetes' CEL `duration()` uses; `parse_go_duration` gives nanoseconds, and the offline
  validator's CEL `duration()` is built on it.
Both end where Go's `time.Duration` ends (int64 nanoseconds, 2562047h47m16.854775807s): a
longer value is a ValueError, as in Go (the CRD refuses such windows).
`format_duration` writes the shortest such string back.
"""

from __future__ import annotations

import re
from datetime import timedelta
from decimal import Decimal

DURATION_PATTERN = r"^([0-9]+([.][0-9]+)?(ns|us|µs|ms|s|m|h))+$"
_WHOLE = re.compile(DURATION_PATTERN)
# One Go component: a number (digits, a point, digits; at least one digit) and its unit.
_GO_PART = re.compile(r"([0-9]*(?:[.][0-9]*)?)(ns|us|µs|μs|ms|s|m|h)")

_NANOS_PER_UNIT = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,  # U+00B5 micro sign
    "μs": 1_000,  # U+03BC Greek mu (Go accepts both)
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
}
MAX_NANOS = 2**63 - 1  # Go's time.Duration

MESSAGE = "must be a duration such as 90s, 4h or 1h30m: numbers each followed by a unit (h, m, s, ms), no spaces"


def _go_quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def parse_go_duration(text: str) -> int:
    """Go's `time.ParseDuration`, in nanoseconds; ValueError with Go's message otherwise."""
    invalid = ValueError(f"time: invalid duration {_go_quote(text)}")
    rest = text
    sign = 1
    if rest[:1] in ("+", "-") and rest:
        sign = -1 if rest[0] == "-" else 1
        rest = rest[1:]
    if rest == "0":
        return 0
    if not rest:
        raise invalid
    total = Decimal(0)
    while rest:
        found = _GO_PART.match(rest)
        if not found or found.group(1) in ("", "."):
            raise invalid
        total += Decimal(found.group(1)) * _NANOS_PER_UNIT[found.group(2)]
        if total > MAX_NANOS + (1 if sign < 0 else 0):
            raise invalid
        rest = rest[found.end():]
    return sign * int(total)


def parse_duration(text: str) -> timedelta:
    """`"1h30m"` -> `timedelta(hours=1, minutes=30)`; ValueError (with what to write) otherwise.

    The CRD's grammar (no sign, no bare `0`); nanoseconds round to the nearest microsecond.
    """
    if not isinstance(text, str) or not _WHOLE.fullmatch(text):
        raise ValueError(f"{text!r} {MESSAGE}")
    try:
        nanos = parse_go_duration(text)
    except ValueError:
        raise ValueError(f"{text!r} must be at most 2562047h (about 292 years)") from None
    return timedelta(microseconds=int((Decimal(nanos) / 1000).to_integral_value()))


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
