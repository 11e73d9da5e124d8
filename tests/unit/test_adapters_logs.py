"""Pod logs, followed (adapters/logs.py): the pure parts, above all the resume/dedup logic that
makes "no line lost, none counted twice" hold (the threads: tests/integration/test_log_streams.py)."""

from __future__ import annotations

import itertools
from datetime import datetime, timezone

from hypothesis import given, settings
from hypothesis import strategies as st

from fillprob_operator.adapters.logs import (
    LineSplitter,
    LogCursor,
    parse_timestamp,
    rfc3339_seconds,
    scan_line,
)

SECOND = 1_000_000_000
BASE = 1_714_564_800 * SECOND  # 2024-05-01T12:00:00Z
OK_LINE = "FILL_PROB_THRESHOLD_RESOLUTION_OK mode=recommend_only effective_bps=2500"
CB_LINE = "FILL_PROB_CIRCUIT_BREAKER_TRIPPED block_count=46 rate_pct=92.0 symbol=SYM1"


def stamp(nanos: int) -> str:
    """The kubelet's RFC3339Nano with 9 digits."""
    whole = datetime.fromtimestamp(nanos // SECOND, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{whole}.{nanos % SECOND:09d}Z"


def since_nanos(since: str | None) -> int | None:
    """What the API server makes of `sinceTime`: whole seconds."""
    return None if since is None else int(datetime.fromisoformat(since.replace("Z", "+00:00")).timestamp()) * SECOND


# --- pure parts ----------------------------------------------------------------------------


def test_parse_timestamp_reads_the_kubelets_prefix_in_any_zone_and_precision():
    assert parse_timestamp(f"{stamp(BASE + 123)} hello world") == (BASE + 123, "hello world")
    assert parse_timestamp("2024-05-01T14:00:00.5+02:00 x") == (BASE + SECOND // 2, "x")
    assert parse_timestamp("2024-05-01T12:00:01Z x") == (BASE + SECOND, "x")
    assert parse_timestamp("no timestamp here") == (None, "no timestamp here")
    assert parse_timestamp("2024-05-01T12:00:01Z") == (None, "2024-05-01T12:00:01Z")  # no space: no line
    assert rfc3339_seconds(BASE + SECOND - 1) == "2024-05-01T12:00:00Z"


def test_scan_line_takes_the_tokens_and_what_follows_them():
    assert scan_line("2024 INFO engine: " + OK_LINE + "\r") == (OK_LINE, None)
    assert scan_line("WARN fill_prob_gate: " + CB_LINE) == (None, CB_LINE)
    assert scan_line("THRESHOLD_RESOLVE_SKIPPED reason=model_dir_unset") == (
        "THRESHOLD_RESOLVE_SKIPPED reason=model_dir_unset", None)
    assert scan_line("XFILL_PROB_THRESHOLD_RESOLUTION_OK mode=x") == (None, None)
    assert scan_line("order SYM1 blocked") == (None, None)


@given(st.lists(st.text(alphabet="ab\n", max_size=8), max_size=10))
def test_line_splitter_gives_the_terminated_lines_whatever_the_chunks(chunks):
    splitter = LineSplitter()
    lines = [line for chunk in chunks for line in splitter.feed(chunk.encode())]
    text = "".join(chunks)
    assert lines == text.split("\n")[:-1]
    assert splitter.rest == text.split("\n")[-1]


# Gaps between lines: many lines share a timestamp or a second, some seconds apart.
GAPS = st.sampled_from([0, 0, 1, 1000, 300_000_000, SECOND - 1, SECOND, 3 * SECOND // 2])


@settings(max_examples=400, deadline=None)
@given(
    gaps=st.lists(GAPS, max_size=40),
    offset=st.integers(0, SECOND - 1),
    drops=st.lists(st.integers(0, 40), max_size=8),
    exact=st.booleans(),
)
def test_every_line_is_taken_once_whatever_the_drops_and_resumes(gaps, offset, drops, exact):
    """The stream drops after any line (or before any new one), is opened again with the cursor's
    sinceTime, and the server resends every line at or after it: whole seconds (the API) or the
    exact time. The lines taken are the log, in order, none twice."""
    times = list(itertools.accumulate(gaps, initial=BASE + offset))[1:]
    log = list(enumerate(times))
    cursor, taken = LogCursor(), []
    for stop in [*sorted(drops), len(log)]:
        since = cursor.resume()
        if exact and cursor.last is not None:
            start_at = cursor.last
        else:
            start_at = since_nanos(since)
        first = next((i for i, (_, at) in enumerate(log) if start_at is None or at >= start_at), len(log))
        for index, at in log[first:max(first, stop)]:
            if cursor.take(at):
                taken.append(index)
    assert taken == [index for index, _ in log]


def test_a_line_without_timestamp_is_always_taken():
    cursor = LogCursor()
    assert cursor.take(BASE) and cursor.take(None)
    cursor.resume()
    assert cursor.take(None) and not cursor.take(BASE) and cursor.take(BASE)
