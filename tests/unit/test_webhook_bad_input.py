"""The Alertmanager receiver under bad input (issue 9, point 4): random tokens, bodies, sizes and
content types, lying lengths, compressed bombs, slow and truncated requests.

The promises, each checked against the real aiohttp server on 127.0.0.1 (port 0), served from a
thread of its own (`LiveReceiver`) so that hypothesis drives it with plain sockets:
- no crash: no exception ever leaves the handler (a middleware records any, so a 500 from an
  unhandled exception is caught even when the client is gone), and the server keeps answering;
- no submit without the right token: `submit` is never called unless the request carried
  exactly `Bearer <token>`;
- 413 past `max_body_bytes`, whatever Content-Length says (or when there is none: chunked, a
  compressed body that inflates);
- memory bounded: the receiver holds at most `max_body_bytes` + a constant per request
  (tracemalloc around many oversized requests);
- slow clients: a stalled connection holds only itself; its body read ends with 408 after the
  body timeout (here a short injected one), its unfinished headers after the keep-alive timeout.
"""

from __future__ import annotations

import asyncio
import gzip
import itertools
import json
import re
import socket
import threading
import time
import tracemalloc
import zlib
from typing import Any, Callable

import pytest
from aiohttp import web
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from fillprob_operator.domain.observations import RollbackRequest
from fillprob_operator.webhook import (
    MAX_EVIDENCE_VALUE,
    MAX_FINGERPRINT,
    make_webhook_app,
    start_webhook_server,
    token_from_file,
)

TOKEN = "s3cret-token"
LIMIT = 4096  # max_body_bytes for these tests: small, so that sizes around it are cheap
FUZZ = settings(max_examples=300, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


# ---------------------------------------------------------------------------- the live server


class LiveReceiver:
    """`make_webhook_app` served by `start_webhook_server` in a thread with its own loop.

    `calls` holds what `submit` was given; `escaped` every exception that left a handler (a
    middleware sees it before aiohttp turns it into a 500 or drops it with the connection).
    `token` may be changed between requests (the provider reads it each time).
    """

    def __init__(self, *, max_body_bytes: int = LIMIT, body_timeout: float = 10.0,
                 keepalive_timeout: float = 75.0, token_provider: Callable[[], Any] | None = None) -> None:
        self.token: Any = TOKEN
        self.token_provider = token_provider or (lambda: self.token)
        self.calls: list[tuple[RollbackRequest, str, str]] = []
        self.escaped: list[BaseException] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._runner = self._run(self._start(max_body_bytes, body_timeout, keepalive_timeout))
        self.port = self._runner.addresses[0][1]

    def _run(self, coro: Any, timeout: float = 10.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    async def _start(self, max_body_bytes: int, body_timeout: float, keepalive_timeout: float) -> web.AppRunner:
        async def submit(request: RollbackRequest, namespace: str, name: str) -> bool:
            self.calls.append((request, namespace, name))
            return True

        @web.middleware
        async def record_escapes(request: web.Request, handler: Callable) -> web.StreamResponse:
            try:
                return await handler(request)
            except web.HTTPException:
                raise
            except BaseException as exc:
                self.escaped.append(exc)
                raise

        app = make_webhook_app(self.token_provider, submit, max_body_bytes=max_body_bytes,
                               body_timeout=body_timeout)
        app.middlewares.append(record_escapes)
        # A short shutdown: aiohttp lingers up to 10 s on a connection whose oversized body it
        # refused (draining what the client still sends); the tests need not wait for that.
        return await start_webhook_server(app, "127.0.0.1", 0, keepalive_timeout=keepalive_timeout,
                                          shutdown_timeout=1.0)

    def close(self) -> None:
        async def cancel_the_rest() -> None:  # e.g. a handler still lingering on a refused body
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        try:
            self._run(self._runner.cleanup())
            self._run(cancel_the_rest())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop.close()

    def connect(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def assert_serving(self) -> None:
        """No handler let an exception out, and a valid alert is still accepted."""
        assert self.escaped == [], self.escaped
        before = len(self.calls)
        status, body = self.send(head(), json.dumps(payload(alert(fingerprint=f"probe{next(_unique)}"))).encode())
        assert status == 200 and len(json.loads(body)["accepted"]) == 1, body
        assert len(self.calls) == before + 1

    def send(self, head_bytes: bytes, body: bytes = b"", *, chunked: bool = False,
             content_length: int | None = None) -> tuple[int, bytes]:
        """One request on a new connection; (status, response body)."""
        with self.connect() as sock:
            sock.sendall(request_bytes(head_bytes, body, chunked=chunked, content_length=content_length))
            return read_response(sock)


_unique = itertools.count()


@pytest.fixture
def receiver():
    live = LiveReceiver()
    yield live
    live.close()


def head(authorization: bytes | None = b"Bearer " + TOKEN.encode(), content_type: bytes = b"application/json",
         extra: bytes = b"") -> bytes:
    lines = [b"POST /alertmanager HTTP/1.1", b"Host: 127.0.0.1"]
    if authorization is not None:
        lines.append(b"Authorization: " + authorization)
    lines.append(b"Content-Type: " + content_type)
    return b"\r\n".join(lines) + b"\r\n" + extra


def request_bytes(head_bytes: bytes, body: bytes, *, chunked: bool = False, content_length: int | None = None) -> bytes:
    if chunked:
        framed = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in _parts(body, 1000)) + b"0\r\n\r\n"
        return head_bytes + b"Transfer-Encoding: chunked\r\n\r\n" + framed
    length = len(body) if content_length is None else content_length
    return head_bytes + b"Content-Length: %d\r\n\r\n" % length + body


def _parts(data: bytes, size: int) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)]


def read_response(sock: socket.socket, timeout: float = 10.0) -> tuple[int, bytes]:
    """Status and body of one HTTP/1.1 response (Content-Length framed, as aiohttp answers)."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before a response: {data!r}")
        data += chunk
    header, _, rest = data.partition(b"\r\n\r\n")
    status = int(header.split(b" ", 2)[1])
    match = re.search(rb"(?im)^content-length:\s*(\d+)", header)
    length = int(match.group(1)) if match else 0
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    return status, rest[:length]


def alert(fingerprint: str = "a1b2c3", **labels: str) -> dict[str, Any]:
    return {
        "status": "firing",
        "labels": {"alertname": "FillProbCircuitBreakerTripped", "fillprob_rollout": "grinder",
                   "namespace": "trading", **labels},
        "annotations": {"summary": "circuit breaker tripped"},
        "startsAt": "2026-01-02T03:04:05Z",
        "fingerprint": fingerprint,
    }


def payload(*alerts: dict[str, Any]) -> dict[str, Any]:
    return {"version": "4", "status": "firing", "receiver": "fillprob-operator", "alerts": list(alerts)}


def until(predicate: Callable[[], bool], deadline: float = 5.0) -> None:
    end = time.monotonic() + deadline
    while not predicate():
        assert time.monotonic() < end, "condition not reached before the deadline"
        time.sleep(0.01)


# ---------------------------------------------------------------------------- tokens


# Header bytes aiohttp accepts in a field value (no CR, LF, NUL or other controls but tab).
HEADER_BYTES = st.binary(max_size=80).map(
    lambda b: bytes(c for c in b if c == 9 or 32 <= c != 127))
TOKENS = st.text(st.characters(codec="utf-8", exclude_categories=("Cc", "Cs", "Zs", "Zl", "Zp")),
                 min_size=1, max_size=40)


@st.composite
def credentials(draw: Any) -> tuple[str, bytes]:
    """(the configured token, the Authorization header sent): random, or the token mangled."""
    token = draw(TOKENS)
    raw = token.encode("utf-8")
    scheme = draw(st.sampled_from([b"Bearer", b"bearer", b"BEARER", b"Basic", b"Token", b"", b"Bearer:"]))
    presented = draw(st.one_of(
        HEADER_BYTES,
        st.just(raw),
        st.just(raw[:-1]),
        st.just(raw + b"x"),
        st.just(raw.upper()),
        st.just(raw.replace(b"?", b"\xff")),
        HEADER_BYTES.map(lambda junk: raw + junk),
        st.integers(0, max(0, len(raw) - 1)).flatmap(
            lambda i: st.integers(1, 255).map(lambda b: raw[:i] + bytes([b]) + raw[i + 1:])),
    ))
    separator = draw(st.sampled_from([b" ", b"  ", b"\t", b" \t", b""]))
    return token, scheme + separator + presented


def right_token(header: bytes, token: str) -> bool:
    """What counts as the right credential: `Bearer` (any case), a space, the token's exact
    UTF-8 bytes, optional spaces or tabs around them (HTTP trims those from field values)."""
    pattern = rb"(?i:bearer) [ \t]*" + re.escape(token.encode("utf-8")) + rb"[ \t]*"
    return re.fullmatch(pattern, header) is not None


@FUZZ
@given(credentials())
@example(("ab?", b"Bearer ab\xff"))  # UTF-8 "replace" once made b"\xff" equal "?"
@example(("tok", b"Bearer tok\xc2\xa0"))  # a no-break space is not HTTP whitespace
@example(("tok", b"Bearer\ttok"))
def test_no_submit_without_the_right_token(receiver, case):
    token, authorization = case
    receiver.token = token
    before = len(receiver.calls)
    body = json.dumps(payload(alert(fingerprint=f"t{next(_unique)}"))).encode()
    status, answer = receiver.send(head(authorization=authorization), body)
    if right_token(authorization, token):
        assert status == 200, (status, answer)
        assert len(receiver.calls) == before + 1
    else:
        assert status in (400, 401), (status, answer)  # 400: aiohttp refused the header itself
        assert len(receiver.calls) == before
    assert receiver.escaped == []


def test_no_header_and_no_token_configured_submit_nothing(receiver):
    body = json.dumps(payload(alert())).encode()
    for authorization in (None, b"", b"Bearer", b"Bearer ", b"Bearer \t "):
        assert receiver.send(head(authorization=authorization), body)[0] == 401
    for configured in (None, ""):
        receiver.token = configured
        assert receiver.send(head(), body)[0] == 401
    assert receiver.calls == []
    receiver.token = TOKEN
    receiver.assert_serving()


def test_a_token_provider_that_fails_refuses_and_does_not_crash(tmp_path):
    not_utf8 = tmp_path / "token"
    not_utf8.write_bytes(b"\xff\xfe bad")
    assert token_from_file(not_utf8)() is None  # was a UnicodeDecodeError: a 500 per request

    def broken() -> str:
        raise RuntimeError("secret store down")

    for provider in (token_from_file(not_utf8), broken):
        live = LiveReceiver(token_provider=provider)
        try:
            for authorization in (b"Bearer \xff\xfe bad", b"Bearer x"):
                status, _ = live.send(head(authorization=authorization), json.dumps(payload(alert())).encode())
                assert status == 401
            assert live.calls == [] and live.escaped == []
        finally:
            live.close()


# ---------------------------------------------------------------------------- bodies


CONTENT_TYPES = st.one_of(
    st.sampled_from([b"application/json", b"text/plain", b"application/x-www-form-urlencoded",
                     b"multipart/form-data; boundary=x", b"application/json; charset=latin-1", b""]),
    HEADER_BYTES,
)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)


@st.composite
def bodies(draw: Any) -> bytes:
    kind = draw(st.sampled_from(["binary", "json", "payload", "sized"]))
    if kind == "binary":
        return draw(st.binary(max_size=LIMIT * 2))
    if kind == "json":
        return json.dumps(draw(JSON_VALUES)).encode()
    if kind == "payload":  # a real payload with one field replaced by anything
        body = payload(alert(fingerprint=f"b{next(_unique)}"))
        where = draw(st.sampled_from(["version", "status", "alerts", None]))
        if where:
            body[where] = draw(JSON_VALUES)
        return json.dumps(body).encode()
    size = draw(st.integers(LIMIT - 2, LIMIT + 2))  # right at the limit
    return json.dumps(payload(alert()))[:-1].encode() + b" " * (size - len(json.dumps(payload(alert())))) + b"}"


@FUZZ
@given(body=bodies(), content_type=CONTENT_TYPES, chunked=st.booleans())
@example(body=b"[" * LIMIT, content_type=b"application/json", chunked=False)  # was a RecursionError: 500
@example(body=b"x" * (LIMIT + 1), content_type=b"application/json", chunked=True)
def test_random_bodies_sizes_and_content_types_get_an_answer_never_a_crash(receiver, body, content_type, chunked):
    before = len(receiver.calls)
    status, answer = receiver.send(head(content_type=content_type), body, chunked=chunked)
    if len(body) > LIMIT:
        assert status == 413, (status, answer)
    else:
        assert status in (200, 400), (status, answer)
        assert set(json.loads(answer)) >= ({"accepted", "ignored", "rejected"} if status == 200 else {"error"})
    if status != 200:
        assert len(receiver.calls) == before
    assert receiver.escaped == []


def test_the_server_keeps_answering_after_the_fuzzing(receiver):
    for body in (b"", b"{", b"\x00" * 10, b"[" * 100_000, json.dumps(payload()).encode()):
        receiver.send(head(), body)
    receiver.assert_serving()


# ---------------------------------------------------------------------------- lying lengths, encodings


def test_content_length_over_the_limit_is_413_before_any_body_arrives(receiver):
    with receiver.connect() as sock:
        sock.sendall(head() + b"Content-Length: %d\r\n\r\n" % (LIMIT * 1000))  # and never a byte of it
        status, answer = read_response(sock)
    assert status == 413 and "Content-Length" in json.loads(answer)["error"]
    receiver.assert_serving()


def test_a_body_longer_than_its_content_length_is_cut_there_and_the_rest_is_no_request(receiver):
    """The client says 10 bytes and sends a payload: the body is those 10 bytes (400, not JSON),
    the remainder is no request of its own (aiohttp refuses it); nothing is submitted."""
    body = json.dumps(payload(alert())).encode() + b" " * (LIMIT * 4)
    status, answer = receiver.send(head(), body, content_length=10)
    assert status == 400
    assert receiver.calls == []
    receiver.assert_serving()


def test_chunked_without_a_length_over_the_limit_is_413(receiver):
    status, _ = receiver.send(head(), b" " * (LIMIT * 50), chunked=True)
    assert status == 413
    receiver.assert_serving()


def test_a_compressed_body_counts_as_inflated_and_a_bad_one_is_400(receiver):
    bomb = gzip.compress(b" " * (LIMIT * 10_000))  # 40 MB of spaces in ~40 KiB
    status, _ = receiver.send(head(extra=b"Content-Encoding: gzip\r\n"), bomb)
    assert status == 413
    small = json.dumps(payload(alert(fingerprint="gz"))).encode()
    status, _ = receiver.send(head(extra=b"Content-Encoding: deflate\r\n"), zlib.compress(small))
    assert status == 200 and receiver.calls[-1][0].evidence["fingerprint"] == "gz"
    for encoding, junk in ((b"gzip", b"not gzip at all"), (b"deflate", b"\x78\x9c\x00garbage")):
        status, answer = receiver.send(head(extra=b"Content-Encoding: " + encoding + b"\r\n"), junk)
        assert status == 400, answer  # was a 500: the decoding error left the handler
    receiver.assert_serving()


def test_an_alert_that_would_bloat_the_status_is_rejected_or_clipped():
    """Its request key goes into status.requestKeys, its source into history: a huge fingerprint
    rejects that alert, a huge label set is clipped like the evidence."""
    long = alert(fingerprint="f" * (MAX_FINGERPRINT + 1))
    chatty = alert(fingerprint="chatty", **{f"l{i}": "v" * 300 for i in range(8)})
    live = LiveReceiver(max_body_bytes=64 * 1024)
    try:
        status, answer = live.send(head(), json.dumps(payload(long, chatty)).encode())
        assert status == 200, answer
        answer = json.loads(answer)
        assert [r["reason"] for r in answer["rejected"]] == [f"fingerprint longer than {MAX_FINGERPRINT} characters"]
        [(request, _, _)] = live.calls
        assert len(request.source) <= MAX_EVIDENCE_VALUE + 3
    finally:
        live.close()


# ---------------------------------------------------------------------------- memory


OVERSIZED = 16 * 1024 * 1024  # each oversized body, on the wire or inflated
# What aiohttp itself may hold for one connection whatever the body's size: a 256 KiB socket
# read, its stream buffer up to the high-water mark, a bounded piece of inflated data (measured
# at 1.2-2.5 MiB with 2-32 MiB bodies, aiohttp 3.14); a receiver that kept the body would need
# 16 MiB for each.
AIOHTTP_CONSTANT = 4 * 1024 * 1024


def _oversized_requests() -> list[tuple[bytes, bytes]]:
    """(request head and framing, body) of each kind of oversized request; prepared before
    tracing starts, so that the client side allocates nothing big while traced."""
    big = b" " * OVERSIZED
    gz = gzip.compress(big)
    return [
        (head() + b"Content-Length: %d\r\n\r\n" % len(big), big),  # honest, over the limit
        (head() + b"Transfer-Encoding: chunked\r\n\r\n",  # no length at all
         b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in _parts(big, 60_000)) + b"0\r\n\r\n"),
        (head() + b"Content-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % len(gz), gz),  # 16 KiB inflating
        (head() + b"Content-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n",
         b"%x\r\n%s\r\n0\r\n\r\n" % (len(gz), gz)),
    ]


def _send_oversized(port: int, head_bytes: bytes, body: bytes) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head_bytes)
        view = memoryview(body)
        try:
            for offset in range(0, len(view), 65536):  # the server may answer and close early
                sock.sendall(view[offset:offset + 65536])
        except (BrokenPipeError, ConnectionResetError):
            pass
        return read_response(sock)[0]


def test_memory_stays_bounded_over_many_oversized_requests():
    """Invariant: the receiver holds at most max_body_bytes + a constant per request in flight,
    never an oversized body. Measured as the peak of traced allocations (tracemalloc, the whole
    process) over 20 requests of 16 MiB (4 kinds, one at a time), then 8 at a time."""
    max_body = 64 * 1024
    per_request = max_body + AIOHTTP_CONSTANT
    requests = _oversized_requests()
    live = LiveReceiver(max_body_bytes=max_body)
    try:
        for request in requests:  # warm up: imports, caches, first allocations
            assert _send_oversized(live.port, *request) == 413
        tracemalloc.start()
        try:
            baseline = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
            for head_bytes, body in requests * 5:
                assert _send_oversized(live.port, head_bytes, body) == 413
            sequential_peak = tracemalloc.get_traced_memory()[1] - baseline

            tracemalloc.reset_peak()
            results: list[int] = []
            threads = [threading.Thread(target=lambda r=r: results.append(_send_oversized(live.port, *r)))
                       for r in requests * 2]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(30)
            concurrent_peak = tracemalloc.get_traced_memory()[1] - baseline
        finally:
            tracemalloc.stop()
        assert results == [413] * len(threads)
        assert sequential_peak < per_request, sequential_peak
        assert concurrent_peak < len(threads) * per_request, concurrent_peak
        live.assert_serving()
    finally:
        live.close()


# ---------------------------------------------------------------------------- slow and truncated


def test_a_stalled_body_blocks_no_one(receiver, caplog):
    caplog.set_level("INFO", logger="fillprob_operator.webhook")
    with receiver.connect() as stalled:
        stalled.sendall(head() + b"Content-Length: 1000\r\n\r\n" + b'{"version": "4"')  # ... and stalls
        receiver.assert_serving()  # others are answered meanwhile
        receiver.assert_serving()
        stalled.setblocking(False)
        with pytest.raises(BlockingIOError):
            stalled.recv(1)  # the stalled one still waits for its body (10 s)
    until(lambda: "event=webhook_client_gone" in caplog.text)  # and ends when its client goes
    receiver.assert_serving()


def test_a_stalled_body_times_out_with_408():
    live = LiveReceiver(body_timeout=0.3)
    try:
        with live.connect() as stalled:
            stalled.sendall(head() + b"Content-Length: 1000\r\n\r\n" + b'{"version": "4"')
            status, answer = read_response(stalled, timeout=5)
        assert status == 408 and "0.3s" in json.loads(answer)["error"]
        assert live.calls == []
        live.assert_serving()
    finally:
        live.close()


def test_a_trickling_body_is_cut_off_too_the_timeout_is_for_the_whole_body():
    live = LiveReceiver(body_timeout=0.5)
    try:
        with live.connect() as slow:
            slow.sendall(head() + b"Content-Length: 1000\r\n\r\n")
            slow.settimeout(0.05)
            status = None
            end = time.monotonic() + 5
            while status is None and time.monotonic() < end:
                try:
                    slow.sendall(b" ")  # a byte every 50 ms: never idle for long
                    status = read_response(slow, timeout=0.05)[0]
                except (TimeoutError, socket.timeout):
                    continue
        assert status == 408
        live.assert_serving()
    finally:
        live.close()


def test_stalled_headers_block_no_one_and_the_connection_is_closed_after_the_keepalive_timeout():
    live = LiveReceiver(keepalive_timeout=0.5)
    try:
        with live.connect() as stalled:
            stalled.sendall(b"POST /alertmanager HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthor")  # ... and stalls
            live.assert_serving()
            stalled.settimeout(5)
            assert stalled.recv(1024) == b""  # closed by the server, not by us
        live.assert_serving()
    finally:
        live.close()


def test_truncated_requests_get_400_or_are_dropped_without_a_crash(receiver, caplog):
    """A body cut short: the handler ends (400, or the connection is gone: aiohttp closes it
    when the client closes its side), nothing is submitted, nothing escapes."""
    caplog.set_level("INFO", logger="fillprob_operator.webhook")
    body = json.dumps(payload(alert())).encode()

    def ended() -> int:
        return sum(m.startswith(("event=webhook_client_gone", "event=webhook_body_refused"))
                   for m in caplog.messages)

    cut = [
        head() + b"Content-Length: %d\r\n\r\n" % len(body) + body[: len(body) // 2],
        head() + b"Transfer-Encoding: chunked\r\n\r\n%x\r\n" % len(body) + body[:20],
    ]
    for request in cut:
        for half_close in (True, False):
            before = ended()
            with receiver.connect() as sock:
                sock.sendall(request)
                if half_close:  # then wait for what the server says
                    sock.shutdown(socket.SHUT_WR)
                    try:
                        assert read_response(sock)[0] == 400
                    except ConnectionError:
                        pass
            until(lambda: ended() > before)
    # Garbage instead of a request line, a request line alone, a lone GET: aiohttp answers.
    for junk in (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", b"POST /alertmanager HTTP/1.1\r\n\r\n",
                 b"GET / HTTP/1.1\r\n\r\n"):
        with receiver.connect() as sock:
            sock.sendall(junk)
            assert read_response(sock)[0] in (400, 401, 404)
    assert receiver.calls == []
    receiver.assert_serving()
