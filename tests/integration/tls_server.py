"""A real TLS test PKI (openssl) and a real HTTP/2 server over it (the h2 library, server side,
on its own event loop in a thread): what `adapters/http2.py` and the TLS context sharing are
tested against. The server records what a client did that the API server would feel: the
connections it opened, the streams it reset, the streams still open."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Coroutine, Iterator

import h2.config
import h2.connection
import h2.events
import h2.exceptions
from kubernetes import client


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _ca(cwd: Path, name: str) -> None:
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", f"/CN={name}",
             "-keyout", f"{name}.key", "-out", f"{name}.crt", cwd=cwd)


def _signed(cwd: Path, ca: str, name: str, *, server: bool) -> None:
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
             "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=cwd)
    ext = cwd / f"{name}.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1\n" if server else "extendedKeyUsage=clientAuth\n")
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
             "-CAcreateserial", "-days", "1", "-extfile", ext.name, "-out", f"{name}.crt", cwd=cwd)


def make_pki(d: Path) -> Path:
    """A CA with a server (127.0.0.1) and a client certificate; another CA with an impostor."""
    _ca(d, "ca")
    _ca(d, "other-ca")
    _signed(d, "ca", "server", server=True)
    _signed(d, "other-ca", "impostor", server=True)
    _signed(d, "ca", "client", server=False)
    return d


def api_client(pki: Path, port: int, token: str | None = None) -> client.ApiClient:
    """A Kubernetes client configured for a server at 127.0.0.1:port: our CA, our client
    certificate, and a bearer token when given."""
    configuration = client.Configuration()
    configuration.host = f"https://127.0.0.1:{port}"
    configuration.ssl_ca_cert = str(pki / "ca.crt")
    configuration.cert_file = str(pki / "client.crt")
    configuration.key_file = str(pki / "client.key")
    configuration.connection_pool_maxsize = 8
    if token:
        configuration.api_key = {"authorization": f"Bearer {token}"}
    return client.ApiClient(configuration)


def server_context(pki: Path, cert: str, alpn: tuple[str, ...] = ()) -> ssl.SSLContext:
    """Presents `cert`; requires a client certificate our CA signed (no certificate, no handshake)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki / "ca.crt"))
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_cert_chain(pki / f"{cert}.crt", pki / f"{cert}.key")
    if alpn:
        context.set_alpn_protocols(list(alpn))
    return context


@dataclass
class Request:
    path: str
    headers: dict[str, str]
    client_cn: str


@dataclass
class Reply:
    """`status`, then `body` (chunks sent as the window allows); `follow`: the stream stays open
    after them, as a followed log does, until the client resets it; `hold`: no headers at all."""

    status: int = 200
    body: list[bytes] = field(default_factory=list)
    follow: bool = False
    hold: bool = False


class H2Server:
    """`handler(request) -> Reply` for every GET. Counts, on its own loop's thread:
    `connections` accepted, `resets` (paths of streams the client reset), `open` (paths of the
    streams open now)."""

    def __init__(self, context: ssl.SSLContext, handler: Callable[[Request], Reply]) -> None:
        self._context, self._handler = context, handler
        self.connections = 0
        self.resets: list[str] = []
        self.open: dict[tuple[int, int], str] = {}
        self._writers: list[asyncio.StreamWriter] = []
        self._conns: list[tuple[h2.connection.H2Connection, asyncio.StreamWriter]] = []
        self.loop = asyncio.new_event_loop()
        self.port = 0

    # -- the server's loop ----------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        number = self.connections
        self._writers.append(writer)
        peer = writer.get_extra_info("peercert") or {}
        client_cn = dict(x[0] for x in peer.get("subject", ())).get("commonName", "")
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding="utf-8"))
        conn.initiate_connection()
        writer.write(conn.data_to_send())
        self._conns.append((conn, writer))
        window = asyncio.Event()
        tasks: dict[int, asyncio.Task] = {}

        async def respond(stream_id: int, request: Request) -> None:
            reply = self._handler(request)
            if reply.hold:
                return
            conn.send_headers(stream_id, [(":status", str(reply.status))], end_stream=False)
            writer.write(conn.data_to_send())
            for chunk in reply.body:
                while chunk:
                    room = min(conn.local_flow_control_window(stream_id), conn.max_outbound_frame_size)
                    if room <= 0:
                        window.clear()
                        await window.wait()
                        continue
                    conn.send_data(stream_id, chunk[:room])
                    chunk = chunk[room:]
                    writer.write(conn.data_to_send())
            if not reply.follow:
                conn.end_stream(stream_id)
                writer.write(conn.data_to_send())
                self.open.pop((number, stream_id), None)

        try:
            while data := await reader.read(65536):
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.RequestReceived):
                        headers = dict(event.headers)
                        self.open[(number, event.stream_id)] = headers[":path"]
                        tasks[event.stream_id] = asyncio.ensure_future(
                            respond(event.stream_id, Request(headers[":path"], headers, client_cn)))
                    elif isinstance(event, h2.events.StreamReset):
                        self.resets.append(self.open.pop((number, event.stream_id), "?"))
                        if event.stream_id in tasks:
                            tasks[event.stream_id].cancel()
                    elif isinstance(event, h2.events.WindowUpdated):
                        window.set()
                writer.write(conn.data_to_send())
        except (ConnectionError, ssl.SSLError, h2.exceptions.ProtocolError):
            pass
        finally:
            for task in tasks.values():
                task.cancel()
            for key in [k for k in self.open if k[0] == number]:
                del self.open[key]
            writer.close()

    # -- the test's side ------------------------------------------------------------------

    def call(self, fn: Callable[[], object]) -> object:
        """Runs `fn` on the server's loop (its state is the loop's) and returns what it returned."""
        async def run() -> object:
            return fn()
        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(5)

    def drop_connections(self) -> None:
        """Every connection closed from the server's side, as a restarting API server does."""
        self.call(lambda: [w.transport.abort() for w in self._writers])

    def goaway(self) -> None:
        """GOAWAY on every connection, the connection left open (an API server shedding
        connections: `--goaway-chance`, or shutting down)."""
        def send() -> None:
            for conn, writer in self._conns:
                conn.close_connection()
                writer.write(conn.data_to_send())
        self.call(send)

    @contextlib.contextmanager
    def running(self) -> Iterator["H2Server"]:
        started = threading.Event()

        async def main() -> None:
            server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self._context)
            self.port = server.sockets[0].getsockname()[1]
            started.set()
            async with server:
                await server.serve_forever()

        thread = threading.Thread(target=lambda: self._run(main()), daemon=True)
        thread.start()
        started.wait(10)
        try:
            yield self
        finally:
            self.loop.call_soon_threadsafe(lambda: [t.cancel() for t in asyncio.all_tasks(self.loop)])
            thread.join(5)

    def _run(self, main: Coroutine[object, object, None]) -> None:
        asyncio.set_event_loop(self.loop)
        with contextlib.suppress(asyncio.CancelledError):
            self.loop.run_until_complete(main)
