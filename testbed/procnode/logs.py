"""Container logs in the CRI format the shim writes, and the kubelet's log query semantics.

A record is `<RFC3339Nano> <stdout|stderr> <F|P> <content>`; F ends a line, P is a piece of a
longer one. The timestamp is kept apart from the content so `timestamps=true` and `sinceTime`
work like the kubelet's (`kubectl logs --timestamps --since-time`).
"""

from __future__ import annotations

import calendar
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from .shim import format_ts  # noqa: F401 (re-exported: one timestamp format for writer and reader)

_RFC3339 = re.compile(rb"^(\d{4})-(\d\d)-(\d\d)[Tt](\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))?([Zz]|[+-]\d\d:\d\d)$")


def parse_ts(text: str | bytes) -> int:
    """RFC3339 (any fraction, Z or offset) -> ns since the epoch."""
    raw = text.encode() if isinstance(text, str) else text
    m = _RFC3339.match(raw.strip())
    if not m:
        raise ValueError(f"not an RFC3339 time: {text!r}")
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    secs = calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0))
    frac = int((m.group(7) or b"0").ljust(9, b"0"))
    zone = m.group(8)
    if zone not in (b"Z", b"z"):
        sign = 1 if zone[:1] == b"+" else -1
        secs -= sign * (int(zone[1:3]) * 3600 + int(zone[4:6]) * 60)
    return secs * 10**9 + frac


@dataclass(frozen=True)
class Record:
    ts: bytes
    ts_ns: int
    stream: bytes
    full: bool  # F: the line ends here
    content: bytes

    def render(self, timestamps: bool) -> bytes:
        head = self.ts + b" " if timestamps else b""
        return head + self.content + (b"\n" if self.full else b"")


def parse_record(line: bytes) -> Record | None:
    line = line[:-1] if line.endswith(b"\n") else line
    parts = line.split(b" ", 3)
    if len(parts) < 3:
        return None
    try:
        ts_ns = parse_ts(parts[0])
    except ValueError:
        return None
    return Record(parts[0], ts_ns, parts[1], parts[2] != b"P", parts[3] if len(parts) == 4 else b"")


@dataclass(frozen=True)
class LogQuery:
    """The kubelet's containerLogs query (`previous` picks the file, not the records)."""

    tail_lines: int | None = None
    since_ns: int | None = None
    timestamps: bool = False
    limit_bytes: int | None = None
    follow: bool = False


def select(lines: Iterable[bytes], query: LogQuery) -> list[Record]:
    """Records at or after since_ns, then the last tail_lines of them (kubelet order)."""
    records = [r for r in map(parse_record, lines) if r is not None]
    if query.since_ns is not None:
        records = [r for r in records if r.ts_ns >= query.since_ns]
    if query.tail_lines is not None:
        records = records[-query.tail_lines :] if query.tail_lines > 0 else []
    return records


def tail_lines(path: str, count: int, block: int = 64 * 1024) -> tuple[list[bytes], int]:
    """The last `count` complete lines of a file, read from the end; and the offset after them."""
    with open(path, "rb") as f:
        end = f.seek(0, os.SEEK_END)
        data = b""
        pos = end
        while pos > 0 and data.count(b"\n") <= count:
            step = min(block, pos)
            pos -= step
            f.seek(pos)
            data = f.read(step) + data
    cut = data.rfind(b"\n") + 1  # a half-written last record is left for the follower
    lines = data[:cut].splitlines(keepends=True)
    return lines[-count:] if count > 0 else [], pos + cut


def read_lines(path: str) -> tuple[list[bytes], int]:
    """All complete lines and the offset after them."""
    with open(path, "rb") as f:
        data = f.read()
    cut = data.rfind(b"\n") + 1
    return data[:cut].splitlines(keepends=True), cut


class Limiter:
    """Stops output after limit_bytes, like the kubelet's LimitWriter."""

    def __init__(self, limit: int | None) -> None:
        self.left = limit

    def clip(self, chunk: bytes) -> tuple[bytes, bool]:
        """(what may be written, whether the limit is now reached)."""
        if self.left is None:
            return chunk, False
        chunk = chunk[: self.left]
        self.left -= len(chunk)
        return chunk, self.left <= 0


def render_all(records: Iterable[Record], timestamps: bool) -> Iterator[bytes]:
    for r in records:
        yield r.render(timestamps)
