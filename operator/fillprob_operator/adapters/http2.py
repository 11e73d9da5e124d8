"""GET requests with streaming bodies, many on one HTTP/2 connection (issue 10: the RSS per
followed pod log).

A followed pod log was a thread, a connection and its TLS state, about 330 KiB each; here it is
a stream on a shared connection and a queue. The h2 protocol library is driven directly, not
through an HTTP client, for what long-lived streams need and the clients tried did not do
(docs/performance.md):

- a response closed before its end is reset (RST_STREAM CANCEL): the API server stops following
  that pod's log (and the kubelet its file) at once, not when the connection closes;
- data is acknowledged as it is read, so one slow reader holds back its own stream's window,
  not the connection's;
- every wait is bounded: the connection by `timeout`, a response's headers by `timeout` (then the
  stream is reset), its body by `idle_read` (then `TimeoutError`);
- a connection that ends (GOAWAY, EOF, a broken socket) fails each of its streams with the
  reason, and the next request opens a new one. The caller resumes (LogFollower: `sinceTime`).

Everything runs on one event loop; nothing here blocks it.
"""

from __future__ import annotations

import asyncio
import collections
import socket
import ssl
from typing import AsyncIterator, Iterable

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

STREAM_WINDOW = 256 * 1024  # what the server may send one stream before it is read
CONNECTION_WINDOW = 4 * 1024 * 1024  # ... and all of a connection's streams together
READ_SIZE = 64 * 1024
ERROR_BODY_LIMIT = 64 * 1024


class Http2Unavailable(ConnectionError):
    """The server did not agree to HTTP/2 (ALPN): a proxy or load balancer that speaks HTTP/1.1."""


class StreamFailed(ConnectionError):
    """The stream ended without its end: reset by the server, or its connection ended."""


class Http2Response:
    """One request's response: `status`, then the body as it arrives (`chunks`). `aclose` before
    the end resets the stream."""

    http_version = "HTTP/2"

    def __init__(self, connection: "_Connection", stream_id: int, idle_read: float) -> None:
        self._connection = connection
        self.stream_id = stream_id
        self._idle_read = idle_read
        self.status = 0
        self._headers = asyncio.get_running_loop().create_future()
        self._chunks: collections.deque[tuple[bytes, int]] = collections.deque()
        self._arrived = asyncio.Event()
        self._ended = False
        self._failed = ""
        self._closed = False

    # -- the connection's side ----------------------------------------------------------

    def _respond(self, headers: Iterable[tuple[bytes, bytes]]) -> None:
        self.status = int(dict(headers).get(b":status", b"0"))
        if not self._headers.done():
            self._headers.set_result(None)

    def _data(self, data: bytes, flow_controlled: int) -> None:
        self._chunks.append((data, flow_controlled))
        self._arrived.set()

    def _end(self) -> None:
        self._ended = True
        self._arrived.set()

    def _fail(self, reason: str) -> None:
        if self._ended:
            return
        self._failed = reason
        if not self._headers.done():
            self._headers.set_exception(StreamFailed(reason))
            self._headers.exception()  # retrieved: nobody may be waiting any more
        self._arrived.set()

    # -- the reader's side ----------------------------------------------------------------

    async def _wait_headers(self, timeout: float) -> None:
        async with asyncio.timeout(timeout):
            await self._headers

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives; returns at its end. Raises `StreamFailed` when the stream
        or its connection failed, `TimeoutError` when nothing arrived for `idle_read`."""
        while True:
            while self._chunks:
                data, flow_controlled = self._chunks.popleft()
                self._connection.acknowledge(self.stream_id, flow_controlled)
                yield data
            if self._failed:
                raise StreamFailed(self._failed)
            if self._ended:
                return
            self._arrived.clear()
            try:
                async with asyncio.timeout(self._idle_read):
                    await self._arrived.wait()
            except TimeoutError:
                raise TimeoutError(f"nothing arrived for {self._idle_read:g}s") from None

    async def read(self, limit: int = ERROR_BODY_LIMIT) -> bytes:
        """The body (an error's), at most `limit` bytes."""
        body = bytearray()
        async for chunk in self.chunks():
            body += chunk
            if len(body) >= limit:
                break
        return bytes(body[:limit])

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._connection.forget(self, reset=not (self._ended or self._failed))


class _Connection:
    """One TLS connection carrying HTTP/2 streams; `pump` reads it until it ends."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, authority: bytes) -> None:
        self._reader, self._writer = reader, writer
        self._authority = authority
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        self.h2.initiate_connection()
        self.h2.update_settings({h2.settings.SettingCodes.ENABLE_PUSH: 0,
                                 h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW})
        self.h2.increment_flow_control_window(CONNECTION_WINDOW - self.h2.inbound_flow_control_window)
        self.streams: dict[int, Http2Response] = {}
        self.ended = ""  # why, once it has
        self._flush()
        self._pump = asyncio.get_running_loop().create_task(self._read(), name="fillprob-http2")

    def room(self, per_connection: int) -> bool:
        limit = min(per_connection, self.h2.remote_settings.max_concurrent_streams)
        return not self.ended and len(self.streams) < limit

    def request(self, path: bytes, headers: list[tuple[bytes, bytes]], idle_read: float) -> Http2Response:
        """Sends the request at once (no await between choosing this connection and taking a
        stream on it)."""
        stream_id = self.h2.get_next_available_stream_id()
        self.h2.send_headers(stream_id, [(b":method", b"GET"), (b":scheme", b"https"),
                                         (b":authority", self._authority), (b":path", path), *headers],
                             end_stream=True)
        response = self.streams[stream_id] = Http2Response(self, stream_id, idle_read)
        self._flush()
        return response

    def acknowledge(self, stream_id: int, flow_controlled: int) -> None:
        if self.ended or not flow_controlled:
            return
        self.h2.acknowledge_received_data(flow_controlled, stream_id)
        self._flush()

    def forget(self, response: Http2Response, *, reset: bool) -> None:
        self.streams.pop(response.stream_id, None)
        if self.ended:
            return
        # Its unread data still counts against the connection's window: give that back.
        unread = sum(flow_controlled for _, flow_controlled in response._chunks)
        response._chunks.clear()
        try:
            if unread:
                self.h2.acknowledge_received_data(unread, response.stream_id)
            if reset:
                self.h2.reset_stream(response.stream_id, h2.errors.ErrorCodes.CANCEL)
        except h2.exceptions.StreamClosedError:
            pass  # the server ended it meanwhile
        self._flush()

    def _flush(self) -> None:
        data = self.h2.data_to_send()
        if data and not self._writer.is_closing():
            self._writer.write(data)

    async def _read(self) -> None:
        reason = "the connection was closed"
        try:
            while True:
                data = await self._reader.read(READ_SIZE)
                if not data:
                    reason = "the server closed the connection"
                    break
                for event in self.h2.receive_data(data):
                    if isinstance(event, h2.events.ConnectionTerminated):
                        reason = f"the server ended the connection (GOAWAY {event.error_code!r})"
                        raise StreamFailed(reason)
                    self._event(event)
                self._flush()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a broken socket, a protocol error: the same end
            reason = reason if isinstance(exc, StreamFailed) else f"{type(exc).__name__}: {exc}"
        finally:
            self._end(reason)

    def _event(self, event: h2.events.Event) -> None:
        stream = self.streams.get(getattr(event, "stream_id", 0) or 0)
        if stream is None:
            return  # a stream already forgotten (h2 gives its window back itself)
        if isinstance(event, h2.events.ResponseReceived):
            stream._respond(event.headers)
        elif isinstance(event, h2.events.DataReceived):
            stream._data(event.data, event.flow_controlled_length)
        elif isinstance(event, h2.events.StreamEnded):
            stream._end()
        elif isinstance(event, h2.events.StreamReset):
            self.streams.pop(event.stream_id, None)
            stream._fail(f"the server reset the stream ({event.error_code!r})")

    def _end(self, reason: str) -> None:
        if self.ended:
            return
        self.ended = reason
        streams, self.streams = self.streams, {}
        for stream in streams.values():
            stream._fail(reason)
        self._writer.close()

    async def aclose(self) -> None:
        if not self.ended:
            try:
                self.h2.close_connection()
                self._flush()
            except h2.exceptions.ProtocolError:
                pass
        self._pump.cancel()
        self._end("closed by us")
        try:
            async with asyncio.timeout(2):
                await self._writer.wait_closed()
        except (OSError, TimeoutError, ssl.SSLError):
            pass


class Http2Client:
    """GETs to one server over TLS with HTTP/2, at most `per_connection` streams on a connection
    (the API server allows 250 at once by default), new connections as they fill up."""

    def __init__(self, host: str, port: int, *, tls: ssl.SSLContext, timeout: float, idle_read: float,
                 per_connection: int = 100, server_hostname: str | None = None,
                 socket_options: Iterable[tuple[int, int, int]] = ()) -> None:
        self._host, self._port = host, port
        self._tls = tls
        self._tls.set_alpn_protocols(["h2"])
        self._server_hostname = server_hostname or host
        self._timeout = timeout
        self._idle_read = idle_read
        self._per = per_connection
        self._socket_options = list(socket_options)
        self._connections: list[_Connection] = []
        self._lock: asyncio.Lock | None = None
        authority = host if ":" not in host else f"[{host}]"
        self._authority = f"{authority}:{port}".encode()

    @property
    def connections(self) -> int:
        """Connections open now."""
        return sum(1 for connection in self._connections if not connection.ended)

    async def get(self, path: str, headers: Iterable[tuple[str, str]]) -> Http2Response:
        """The response once its headers arrived (any status; the caller reads an error's body).
        Raises `TimeoutError` when they did not within `timeout` (the stream is reset),
        `Http2Unavailable`, `StreamFailed`, `OSError` or `ssl.SSLError` when it cannot ask."""
        fields = [(name.lower().encode(), str(value).encode()) for name, value in headers
                  if name.lower() not in ("host", "connection", "keep-alive", "transfer-encoding", "upgrade")]
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:  # one connection opened at a time, not one per waiting request
            self._connections = [c for c in self._connections if not c.ended]
            connection = next((c for c in self._connections if c.room(self._per)), None)
            if connection is None:
                connection = await self._connect()
                self._connections.append(connection)
            response = connection.request(path.encode(), fields, self._idle_read)
        try:
            await response._wait_headers(self._timeout)
        except BaseException:
            await response.aclose()
            raise
        return response

    async def _connect(self) -> _Connection:
        async with asyncio.timeout(self._timeout):
            reader, writer = await asyncio.open_connection(
                self._host, self._port, ssl=self._tls, server_hostname=self._server_hostname)
        protocol = writer.get_extra_info("ssl_object").selected_alpn_protocol()
        if protocol != "h2":
            writer.close()
            raise Http2Unavailable(
                f"{self._host}:{self._port} did not agree to HTTP/2 (ALPN: {protocol or 'none'}); "
                "FILLPROB_LOG_TRANSPORT=threads follows pod logs over HTTP/1.1")
        sock: socket.socket = writer.get_extra_info("socket")
        for option in self._socket_options:
            sock.setsockopt(*option)
        return _Connection(reader, writer, self._authority)

    async def aclose(self) -> None:
        connections, self._connections = self._connections, []
        for connection in connections:
            await connection.aclose()
