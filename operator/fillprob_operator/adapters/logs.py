"""Pod logs, followed (issue 10): one `follow` stream per pod of a rollout's newest ReplicaSet.

A tick no longer re-reads the head and the tail of every pod's log: `LogFollower` keeps one
stream per (namespace, pod uid, container), each read by its own thread (the client blocks),
and remembers what decides: the pod's first threshold-resolution line and its
`FILL_PROB_CIRCUIT_BREAKER_TRIPPED` lines. Such a line wakes the rollouts watching the pod at
once (runbook 32: the CB trip is the signal; waiting for the next interval was up to 30 s).

No line lost, none counted twice: lines carry the kubelet's RFC3339Nano timestamps
(`timestamps=true`); after a drop the stream is opened again with `sinceTime` (whole seconds,
the API's precision), so the server resends every line of that second and later, and
`LogCursor` skips those already taken. A stream that is down is missing data until it is
resumed (API.md, Everyday change: a log that cannot be read is never "the line is not there").

Two ways to read the streams: a thread per stream over a blocking client (`open_stream`, one
connection each), or a task per stream on the event loop over an asynchronous client
(`open_async`: kubernetes.py `Http2LogStreams`, many streams multiplexed on one HTTP/2
connection, no thread). The pure parts (`parse_timestamp`, `LogCursor`, `scan_line`,
`LineSplitter`) are unit-tested on their own.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import re
import socket
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, AsyncIterator, Awaitable, Callable, Protocol, Sequence

from urllib3.exceptions import ReadTimeoutError

logger = logging.getLogger("fillprob_operator.logs")

STARTUP_TOKENS = (
    "FILL_PROB_THRESHOLD_RESOLUTION_OK",
    "FILL_PROB_THRESHOLD_RESOLUTION_FAILED",
    "THRESHOLD_RESOLVE_SKIPPED",
)
CIRCUIT_BREAKER_TOKEN = "FILL_PROB_CIRCUIT_BREAKER_TRIPPED"
_STARTUP_RE = re.compile(r"\b(?:" + "|".join(STARTUP_TOKENS) + r")\b.*")
_CB_RE = re.compile(r"\b" + CIRCUIT_BREAKER_TOKEN + r"\b.*")
# What the kubelet sends as the log (HTTP 200) when it cannot read the container's log file:
# k8s.io/cri-client pkg/logs ReadLogs' errors, e.g. `failed to try resolving symlinks in path
# "/var/log/pods/..."`, `failed to open log file "..."`, and, while it waits at the end of the
# file for more, `failed to create fsnotify watcher: too many open files` (its user is out of
# inotify instances, `fs.inotify.max_user_instances`: one per followed log).
KUBELET_LOG_FILE_ERROR = re.compile(
    r'failed to (?:(?:try resolving symlinks in path|open log file|tail \d+ lines of log file|'
    r'seek -?\d+ in log file|read log file|reset seek in log file|watch directory) "|'
    r'create fsnotify watcher: |get parse function: )'
)
# `2024-05-01T12:00:00.123456789Z ` (the kubelet writes 9 digits and the node's offset).
_TIMESTAMP = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d) ")

# Circuit-breaker lines kept per pod (evidence; one is enough to decide).
MAX_TRIP_LINES = 100
# Reconnect backoff after a failed or empty connection (seconds): a terminated container's
# stream ends at once, an API server that is down refuses at once.
BACKOFF_START, BACKOFF_MAX = 0.5, 10.0
# A stream that ran this long (or delivered a line) before it ended is resumed at once.
HEALTHY_SECONDS = 5.0
# An opened stream is readable once it delivers a log line, or once it has been open this long
# without a byte (a quiet log). Not at the open itself: the kubelet answers 200 and then sends
# its error as the body, so a tick between the open and that error would take an unreadable log
# for a readable one without the line (seen in CI: RestartTimedOut while the log was hidden).
QUIET_SECONDS = 1.0
# No byte for this long: open the stream again (TCP keepalive finds dead peers sooner).
IDLE_READ_SECONDS = 3600.0
# A pod that logs circuit-breaker lines by the thousand wakes its rollout at most this often
# (the first line at once; one tick decides on all lines taken by then).
WAKE_SECONDS = 1.0


class LogFileError(Exception):
    """The kubelet answered with its own error instead of the log."""


def parse_timestamp(line: str) -> tuple[int | None, str]:
    """(nanoseconds since the epoch, the line without its timestamp); (None, line) when the
    line carries none."""
    found = _TIMESTAMP.match(line)
    if not found:
        return None, line
    whole, fraction, zone = found.groups()
    try:
        at = datetime.fromisoformat(whole + ("+00:00" if zone == "Z" else zone))
    except ValueError:
        return None, line
    nanos = int((fraction or "0").ljust(9, "0"))
    return int(at.timestamp()) * 1_000_000_000 + nanos, line[found.end():]


def rfc3339_nanos(nanos: int) -> str:
    """A line's timestamp as the kubelet wrote it: RFC3339, nanoseconds, UTC."""
    return f"{rfc3339_seconds(nanos)[:-1]}.{nanos % 1_000_000_000:09d}Z"


def rfc3339_seconds(nanos: int) -> str:
    """`sinceTime` for a line at `nanos`: its second, UTC (the API has whole seconds only)."""
    return datetime.fromtimestamp(nanos // 1_000_000_000, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class LogCursor:
    """Where a followed log stands: the newest timestamp taken and how many lines carried it.

    `resume()` gives the `sinceTime` to reopen with; the server then resends every line at or
    after that second (kubelet: a line is skipped only when `since.After(timestamp)`), and
    `take()` answers False for the ones already taken: older than the newest, or the first
    `at_last` lines at exactly the newest timestamp. A line without a timestamp is always new.
    """

    def __init__(self) -> None:
        self.last: int | None = None
        self.at_last = 0
        self._replaying = False
        self._replay = 0

    def resume(self) -> str | None:
        self._replaying = self.last is not None
        self._replay = self.at_last
        return rfc3339_seconds(self.last) if self.last is not None else None

    def take(self, at: int | None) -> bool:
        if at is None:
            return True
        if self._replaying and self.last is not None:
            if at < self.last:
                return False
            if at == self.last and self._replay > 0:
                self._replay -= 1
                return False
            self._replaying = False
        if self.last is None or at > self.last:
            self.last, self.at_last = at, 1
        elif at == self.last:
            self.at_last += 1
        return True


def scan_line(line: str) -> tuple[str | None, str | None]:
    """(the resolution token and what follows, the CB token and what follows) of one log line;
    a logger prefix (time, level) before the token is dropped."""
    line = line.rstrip("\r")
    startup = _STARTUP_RE.search(line)
    trip = _CB_RE.search(line)
    return (startup.group(0).strip() if startup else None, trip.group(0).strip() if trip else None)


class LineSplitter:
    """Chunks in, newline-terminated lines out; an unterminated tail is never a line (a drop
    mid-line resends the whole line), but is kept in `rest` for a look at the end."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, chunk: bytes | str) -> list[str]:
        self._buffer.extend(chunk.encode("utf-8") if isinstance(chunk, str) else chunk)
        lines, start = [], 0
        while (end := self._buffer.find(b"\n", start)) != -1:
            lines.append(self._buffer[start:end].decode("utf-8", errors="replace"))
            start = end + 1
        del self._buffer[:start]
        return lines

    @property
    def rest(self) -> str:
        return self._buffer.decode("utf-8", errors="replace")


@dataclass(frozen=True)
class PodLog:
    """What a pod's followed log said; `readable=False` while its stream is down (missing data)."""

    resolution_line: str | None = None
    circuit_breaker_lines: tuple[str, ...] = ()
    readable: bool = False


Owner = tuple[str, str]  # (namespace, rollout name)
StreamKey = tuple[str, str, str]  # (namespace, pod uid, container)


class AsyncLogResponse(Protocol):
    """What `open_async` returns: the body as it arrives, and a close. `chunks()` raises
    `TimeoutError` when nothing arrived for IDLE_READ_SECONDS."""

    def chunks(self) -> AsyncIterator[bytes]: ...

    async def aclose(self) -> None: ...


class _Stream:
    """One followed pod log. The reader (a thread, or a task) writes the fields under `lock`;
    the event loop owns `owners` and the waiters' futures."""

    def __init__(self, namespace: str, pod: str, uid: str, container: str) -> None:
        self.namespace, self.pod, self.uid, self.container = namespace, pod, uid, container
        self.owners: set[Owner] = set()
        self.lock = threading.Lock()
        self.cursor = LogCursor()
        self.resolution: str | None = None
        self.trips: collections.deque[str] = collections.deque(maxlen=MAX_TRIP_LINES)
        self.readable = False
        self.answered = False
        # The connection being read (counted from 1) until its read ends; None between them.
        # Only that connection's first line, or its quiet timer, may call the log readable.
        self.opened = 0
        self.live: int | None = None
        self.waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self.stopping = threading.Event()
        self.response: Any = None
        self.task: asyncio.Task[None] | None = None  # the reader, when it is a task
        # The event loop's: when this pod may wake its rollouts again, and the loop that has a
        # wake waiting for that moment.
        self.wake_at = 0.0
        self.wake_waiting: asyncio.AbstractEventLoop | None = None

    def snapshot(self) -> PodLog:
        with self.lock:
            return PodLog(self.resolution, tuple(self.trips), self.readable)


def interrupt(response: Any) -> None:
    """Unblock a thread reading `response` (a urllib3 response): shut its socket down (a close
    from another thread does not wake a blocked recv on Linux), then close it."""
    connection = getattr(response, "connection", None) or getattr(response, "_connection", None)
    sock = getattr(connection, "sock", None)
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
    try:
        response.close()
    except Exception:  # noqa: BLE001 - the reader may be closing it at the same moment
        pass


class LogFollower:
    """One reader per followed pod log, at most `max_streams`; the rest are missing data.

    `open_stream(namespace, pod, container, since_time)` opens `GET .../pods/<pod>/log?follow=true
    &timestamps=true[&sinceTime=...]` and returns the streaming response (iterable `stream()`,
    `close()`), raising `ApiException` (or anything else) when it cannot: a thread reads each.
    Or `open_async` (the same, awaited; an `AsyncLogResponse`): a task on the event loop reads
    each. Either raises an exception with the HTTP `status` when the server refuses.
    `wake(namespace, name)` is called (in the event loop) when a resolution or circuit-breaker
    line arrives.
    """

    def __init__(
        self,
        open_stream: Callable[[str, str, str, str | None], Any] | None = None,
        *,
        open_async: Callable[[str, str, str, str | None], Awaitable[AsyncLogResponse]] | None = None,
        aclose: Callable[[], Awaitable[None]] | None = None,
        max_streams: int = 200,
        metrics: Any = None,
        wake: Callable[[str, str], None] | None = None,
        quiet_seconds: float = QUIET_SECONDS,
    ) -> None:
        if (open_stream is None) == (open_async is None):
            raise ValueError("LogFollower needs exactly one of open_stream, open_async")
        self._open = open_stream
        self._open_async = open_async
        self._aclose = aclose
        self._max = max_streams
        self._quiet = quiet_seconds
        self._metrics = metrics
        self._wake = wake
        self._streams: dict[StreamKey, _Stream] = {}
        # owner -> the keys of the streams it follows (a tick looks at its own, not at all).
        self._owned: dict[Owner, set[StreamKey]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    @property
    def asynchronous(self) -> bool:
        """Tasks on the event loop read the streams (`open_async`), not threads."""
        return self._open_async is not None

    def wake_with(self, wake: Callable[[str, str], None]) -> None:
        self._wake = wake

    # -- the event loop's side -------------------------------------------------------------

    async def observe(
        self, owner: Owner, namespace: str, pods: Sequence[tuple[str, str]], container: str, *, timeout: float
    ) -> dict[str, PodLog]:
        """Follow exactly these pods (name, uid) for `owner`: streams start for new ones, stop for
        pods no owner asks for any more. A new stream is waited for until its first answer (at
        most `timeout`), as a read was. Returns uid -> what its log said so far."""
        self._loop = asyncio.get_running_loop()
        wanted = {(namespace, uid, container): name for name, uid in pods}
        for key in [k for k in self._owned.get(owner, ()) if k not in wanted]:
            self._release(key, owner)
        waits: list[asyncio.Future[None]] = []
        for key, name in wanted.items():
            stream = self._streams.get(key)
            if stream is None:
                if self._closed or len(self._streams) >= self._max:
                    logger.warning("event=log_stream_not_started namespace=%s pod=%s reason=%s",
                                   namespace, name, "closed" if self._closed else f"{self._max} streams open")
                    continue
                stream = self._start(namespace, name, key[1], container)
            stream.owners.add(owner)
            self._owned.setdefault(owner, set()).add(key)
            with stream.lock:
                if not stream.answered:
                    future = self._loop.create_future()
                    stream.waiters.append((self._loop, future))
                    waits.append(future)
        if waits:
            await asyncio.wait(waits, timeout=timeout)
            for future in waits:
                future.cancel()
        return {key[1]: (self._streams[key].snapshot() if key in self._streams else PodLog()) for key in wanted}

    def forget(self, owner: Owner) -> None:
        """The rollout's daemon stopped here: stop the streams only it asked for."""
        for key in list(self._owned.get(owner, ())):
            self._release(key, owner)

    def close(self) -> None:
        self._closed = True
        for key in list(self._streams):
            self._stop(key)

    async def aclose(self) -> None:
        """`close`, then the asynchronous client's connections (the operator's cleanup)."""
        self.close()
        if self._aclose is not None:
            await self._aclose()

    def _start(self, namespace: str, pod: str, uid: str, container: str) -> _Stream:
        stream = _Stream(namespace, pod, uid, container)
        self._streams[(namespace, uid, container)] = stream
        if self._open_async is not None:
            stream.task = asyncio.get_running_loop().create_task(self._follow(stream), name=f"fillprob-log-{pod}")
            return stream
        threading.Thread(
            target=self._run, args=(stream,), name=f"fillprob-log-{pod}"[:60], daemon=True
        ).start()
        return stream

    def _release(self, key: StreamKey, owner: Owner) -> None:
        stream = self._streams[key]
        stream.owners.discard(owner)
        self._disown(owner, key)
        if not stream.owners:
            self._stop(key)

    def _stop(self, key: StreamKey) -> None:
        stream = self._streams.pop(key)
        for owner in stream.owners:
            self._disown(owner, key)
        stream.stopping.set()
        if stream.task is not None:
            stream.task.cancel()  # its `finally` closes the response
            return
        with stream.lock:
            response = stream.response
        if response is not None:
            interrupt(response)

    def _disown(self, owner: Owner, key: StreamKey) -> None:
        keys = self._owned.get(owner)
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._owned[owner]

    def _signal(self, stream: _Stream) -> None:
        """In the event loop: a line that decides arrived; wake every rollout watching the pod,
        at once, or WAKE_SECONDS after the last wake (one waiting wake at most)."""
        loop = asyncio.get_running_loop()
        if loop.time() >= stream.wake_at:
            self._wake_owners(stream)
        elif stream.wake_waiting is not loop:
            stream.wake_waiting = loop
            loop.call_at(stream.wake_at, self._wake_owners, stream)

    def _wake_owners(self, stream: _Stream) -> None:
        stream.wake_waiting = None
        stream.wake_at = asyncio.get_running_loop().time() + WAKE_SECONDS
        if self._wake is None:
            return
        for namespace, name in list(stream.owners):
            self._wake(namespace, name)

    # -- the reader thread's side ----------------------------------------------------------

    def _call_in_loop(self, fn: Callable[..., Any], *args: Any) -> None:
        loop = self._loop
        if loop is None:
            return
        try:
            loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop is closed (the operator is exiting)
            pass

    def _arm_quiet(self, stream: _Stream, connection: int) -> None:
        """In the event loop: the connection opened; call it readable after QUIET_SECONDS of
        silence (a line calls it readable sooner, an error or a drop before then, never)."""
        asyncio.get_running_loop().call_later(self._quiet, self._answer, stream, True, "", connection)

    def _answer(self, stream: _Stream, readable: bool, error: str = "", connection: int | None = None) -> None:
        with stream.lock:
            if connection is not None and (stream.live != connection or (stream.answered and stream.readable)):
                return  # that connection's read has ended (or it is already readable)
            was = stream.readable if stream.answered else None
            stream.readable = readable
            stream.answered = True
            waiters, stream.waiters = stream.waiters, []
        for loop, future in waiters:
            try:
                loop.call_soon_threadsafe(_resolve, future)
            except RuntimeError:
                pass
        if was is not False and not readable:
            logger.warning("event=log_stream_down namespace=%s pod=%s container=%s error=%r",
                           stream.namespace, stream.pod, stream.container, error)
        elif was is False and readable:
            logger.info("event=log_stream_resumed namespace=%s pod=%s container=%s",
                        stream.namespace, stream.pod, stream.container)

    def _take(self, stream: _Stream, raw: str) -> None:
        """Take one line unless it is one resent after a resume."""
        at, line = parse_timestamp(raw)
        if at is None and KUBELET_LOG_FILE_ERROR.match(line):
            raise LogFileError(line.strip())
        with stream.lock:
            if not stream.cursor.take(at):
                return
            resolution, trip = scan_line(line)
            decides = first_trip = False
            if resolution is not None and stream.resolution is None:
                stream.resolution = resolution
                decides = True
            if trip is not None:
                stream.trips.append(trip)
                decides = True
                first_trip = len(stream.trips) == 1
        if decides:
            self._call_in_loop(self._signal, stream)
        if first_trip and at is not None:
            # A CB trip's way here, in parts: written (the kubelet's timestamp, on the node's
            # clock), seen now; the tick's transition line says how long deciding and acting took.
            logger.info("event=circuit_breaker_line namespace=%s pod=%s container=%s written_at=%s seen_after_ms=%.0f",
                        stream.namespace, stream.pod, stream.container, rfc3339_nanos(at),
                        (time.time_ns() - at) / 1e6)

    def _read(self, stream: _Stream, response: Any, connection: int) -> None:
        """Read until the stream ends; raises on a drop. The first log line (not the kubelet's
        error) makes the stream readable."""
        splitter = LineSplitter()
        for chunk in response.stream(amt=None, decode_content=False):
            self._feed(stream, splitter, chunk, connection)
        _ended(splitter)

    def _feed(self, stream: _Stream, splitter: LineSplitter, chunk: bytes, connection: int) -> None:
        lines = splitter.feed(chunk)
        for raw in lines:
            self._take(stream, raw)
        if lines and not stream.readable:  # a hint read without the lock; _answer checks
            self._answer(stream, True, connection=connection)

    def _run(self, stream: _Stream) -> None:
        backoff = BACKOFF_START
        while not stream.stopping.is_set():
            with stream.lock:
                since = stream.cursor.resume()
            if self._metrics is not None:  # prometheus_client is thread-safe
                self._metrics.kubernetes_requests.labels("follow", "pods/log").inc()
            try:
                response = self._open(stream.namespace, stream.pod, stream.container, since)
            except Exception as exc:  # noqa: BLE001 - every failure is "cannot read now"
                status = getattr(exc, "status", None)
                # 400: the container is waiting to start; 404: the pod is gone. Nothing is
                # logged, so nothing is missing (as a read answered "").
                self._answer(stream, status in (400, 404), f"{type(exc).__name__}: {exc}")
                stream.stopping.wait(backoff)
                backoff = min(BACKOFF_MAX, backoff * 2)
                continue
            with stream.lock:
                stream.response = response
                stream.opened += 1
                connection = stream.live = stream.opened
            if stream.stopping.is_set():
                interrupt(response)
                break
            self._call_in_loop(self._arm_quiet, stream, connection)
            started, error = time.monotonic(), ""
            with stream.lock:
                before = (stream.cursor.last, stream.cursor.at_last)
            try:
                self._read(stream, response, connection)
                # Ended cleanly (a container that exited): the kubelet sent the whole log.
                self._answer(stream, True, connection=connection)
            except ReadTimeoutError:
                pass  # idle for IDLE_READ_SECONDS: a quiet pod, not a drop; open it again
            except Exception as exc:  # noqa: BLE001 - a drop, a kubelet error
                error = f"{type(exc).__name__}: {exc}"
            finally:
                with stream.lock:
                    stream.response = None
                    stream.live = None
                try:
                    response.close()
                except Exception:  # noqa: BLE001
                    pass
            if stream.stopping.is_set():
                break
            if self._read_ended(stream, error, before, started):
                backoff = BACKOFF_START
                continue
            # Ended at once (a terminated container, a kubelet that refuses): wait a little.
            stream.stopping.wait(backoff)
            backoff = min(BACKOFF_MAX, backoff * 2)

    def _read_ended(self, stream: _Stream, error: str, before: tuple[int | None, int], started: float) -> bool:
        """After a connection's read: a drop is missing data until a reconnect answers (never "no
        such line"). True when the connection was healthy (it delivered, or ran HEALTHY_SECONDS):
        reopen at once, else after the backoff."""
        if error:
            self._answer(stream, False, error)
        with stream.lock:
            progressed = (stream.cursor.last, stream.cursor.at_last) != before
        return progressed or time.monotonic() - started >= HEALTHY_SECONDS


    # -- the reader task's side (open_async) ------------------------------------------------

    async def _follow(self, stream: _Stream) -> None:
        """`_run` as a task: the same answers, resumes and backoff, awaiting instead of blocking."""
        assert self._open_async is not None
        backoff = BACKOFF_START
        while not stream.stopping.is_set():
            with stream.lock:
                since = stream.cursor.resume()
            if self._metrics is not None:
                self._metrics.kubernetes_requests.labels("follow", "pods/log").inc()
            try:
                response = await self._open_async(stream.namespace, stream.pod, stream.container, since)
            except Exception as exc:  # noqa: BLE001 - every failure is "cannot read now"
                self._answer(stream, getattr(exc, "status", None) in (400, 404), f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(backoff)
                backoff = min(BACKOFF_MAX, backoff * 2)
                continue
            with stream.lock:
                stream.opened += 1
                connection = stream.live = stream.opened
                before = (stream.cursor.last, stream.cursor.at_last)
            self._arm_quiet(stream, connection)
            started, error = time.monotonic(), ""
            try:
                await self._read_async(stream, response, connection)
                self._answer(stream, True, connection=connection)
            except TimeoutError:
                pass  # idle for IDLE_READ_SECONDS: a quiet pod, not a drop; open it again
            except Exception as exc:  # noqa: BLE001 - a drop, a kubelet error
                error = f"{type(exc).__name__}: {exc}"
            finally:
                with stream.lock:
                    stream.live = None
                try:
                    await response.aclose()
                except Exception:  # noqa: BLE001
                    pass
            if self._read_ended(stream, error, before, started):
                backoff = BACKOFF_START
                continue
            await asyncio.sleep(backoff)
            backoff = min(BACKOFF_MAX, backoff * 2)

    async def _read_async(self, stream: _Stream, response: AsyncLogResponse, connection: int) -> None:
        splitter = LineSplitter()
        async for chunk in response.chunks():
            self._feed(stream, splitter, chunk, connection)
        _ended(splitter)


def _ended(splitter: LineSplitter) -> None:
    """The stream ended: an unterminated tail that is the kubelet's error is a drop, not a log."""
    rest = splitter.rest
    if parse_timestamp(rest)[0] is None and KUBELET_LOG_FILE_ERROR.match(rest):
        raise LogFileError(rest.strip())


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
