"""procnode: CRI log records, the kubelet's log query (since, tail, timestamps, limitBytes), query parsing."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "testbed"))

from procnode.logs import Limiter, LogQuery, format_ts, parse_record, parse_ts, read_lines, select, tail_lines  # noqa: E402
from procnode.server import BadRequest, parse_query  # noqa: E402

S = 10**9
BASE = 1_767_225_600 * S  # 2026-01-01T00:00:00Z


def record(i: int, text: str, stream: str = "stdout", tag: str = "F") -> bytes:
    return f"{format_ts(BASE + i * S + 5)} {stream} {tag} {text}\n".encode()


LINES = [record(0, "zero"), record(1, "one", "stderr"), record(2, "two"), record(3, "par", tag="P"), record(3, "t-three"), record(4, "four")]


def render(records, timestamps: bool = False) -> bytes:
    return b"".join(r.render(timestamps) for r in records)


def test_format_ts_is_go_rfc3339nano() -> None:
    assert format_ts(BASE) == "2026-01-01T00:00:00Z"
    assert format_ts(BASE + 120_000_000) == "2026-01-01T00:00:00.12Z"
    assert format_ts(BASE + 1) == "2026-01-01T00:00:00.000000001Z"


@pytest.mark.parametrize(
    ("text", "ns"),
    [
        ("2026-01-01T00:00:00Z", BASE),
        ("2026-01-01T00:00:00.5Z", BASE + S // 2),
        ("2026-01-01T00:00:00.000000001Z", BASE + 1),
        ("2026-01-01T01:00:00+01:00", BASE),
        ("2025-12-31T23:30:00-00:30", BASE),
    ],
)
def test_parse_ts(text: str, ns: int) -> None:
    assert parse_ts(text) == ns


def test_parse_record() -> None:
    r = parse_record(b"2026-01-01T00:00:00.5Z stderr F hello world  \n")
    assert (r.ts_ns, r.stream, r.full, r.content) == (BASE + S // 2, b"stderr", True, b"hello world  ")
    assert parse_record(b"2026-01-01T00:00:00Z stdout F \n").content == b""
    assert parse_record(b"garbage line\n") is None


def test_select_everything_and_partial_lines() -> None:
    assert render(select(LINES, LogQuery())) == b"zero\none\ntwo\npart-three\nfour\n"


def test_timestamps_prefix_each_record() -> None:
    out = render(select(LINES[:2], LogQuery()), timestamps=True)
    assert out == b"2026-01-01T00:00:00.000000005Z zero\n2026-01-01T00:00:01.000000005Z one\n"


def test_since_then_tail() -> None:
    assert render(select(LINES, LogQuery(since_ns=BASE + 3 * S))) == b"part-three\nfour\n"
    assert render(select(LINES, LogQuery(tail_lines=1))) == b"four\n"
    assert render(select(LINES, LogQuery(tail_lines=0))) == b""
    assert render(select(LINES, LogQuery(tail_lines=10, since_ns=BASE + 4 * S))) == b"four\n"


def test_tail_lines_reads_from_the_end(tmp_path: Path) -> None:
    path = tmp_path / "c.log"
    many = [record(i, f"line {i}") for i in range(5000)]
    path.write_bytes(b"".join(many) + b"2026-01-01T00:00:00Z stdout F half-writ")
    lines, offset = tail_lines(str(path), 3, block=1024)
    assert lines == many[-3:]
    assert offset == len(b"".join(many))
    all_lines, end = read_lines(str(path))
    assert all_lines == many and end == offset
    assert tail_lines(str(path), 0)[0] == []


def test_limiter() -> None:
    lim = Limiter(5)
    assert lim.clip(b"abc") == (b"abc", False)
    assert lim.clip(b"defg") == (b"de", True)
    assert Limiter(None).clip(b"x" * 100) == (b"x" * 100, False)


def test_parse_query() -> None:
    q, previous = parse_query("tailLines=5&timestamps=true&follow=1&limitBytes=100&previous=false", now_ns=BASE)
    assert (q.tail_lines, q.timestamps, q.follow, q.limit_bytes, q.since_ns, previous) == (5, True, True, 100, None, False)
    q, previous = parse_query("sinceTime=2026-01-01T00:00:00Z&previous=true", now_ns=BASE)
    assert q.since_ns == BASE and previous
    q, _ = parse_query("sinceSeconds=10", now_ns=BASE)
    assert q.since_ns == BASE - 10 * S
    with pytest.raises(BadRequest):
        parse_query("tailLines=x", now_ns=BASE)
    with pytest.raises(BadRequest):
        parse_query("sinceTime=yesterday", now_ns=BASE)
