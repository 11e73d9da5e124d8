"""The kubelet HTTPS API the API server calls for `pods/log` (so `kubectl logs` works), and /healthz.

    GET /containerLogs/{namespace}/{pod}/{container}?tailLines=&sinceTime=&sinceSeconds=&timestamps=
        &follow=&limitBytes=&previous=

No client authentication: it listens on loopback only (the API server does not verify its cert).
"""

from __future__ import annotations

import logging
import os
import select
import socket
import ssl
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from . import logs
from .runtime import read_json
from .worker import PodWorker

log = logging.getLogger("procnode.server")


class BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def parse_query(raw: str, now_ns: int) -> tuple[logs.LogQuery, bool]:
    """(query, previous) from the containerLogs query string."""
    q = {k: v[-1] for k, v in parse_qs(raw, keep_blank_values=True).items()}

    def flag(name: str) -> bool:
        return q.get(name, "").lower() in ("true", "1")

    def number(name: str) -> int | None:
        if q.get(name) in (None, ""):
            return None
        try:
            value = int(q[name])
        except ValueError as exc:
            raise BadRequest(400, f"{name}: not an integer: {q[name]!r}") from exc
        if value < 0:
            raise BadRequest(400, f"{name} must not be negative")
        return value

    since_ns = None
    if q.get("sinceTime"):
        try:
            since_ns = logs.parse_ts(q["sinceTime"])
        except ValueError as exc:
            raise BadRequest(400, str(exc)) from exc
    seconds = number("sinceSeconds")
    if seconds is not None:
        since_ns = now_ns - seconds * 10**9
    query = logs.LogQuery(
        tail_lines=number("tailLines"), since_ns=since_ns, timestamps=flag("timestamps"),
        limit_bytes=number("limitBytes"), follow=flag("follow"),
    )  # fmt: skip
    return query, flag("previous")


class Handler(BaseHTTPRequestHandler):
    server_version = "procnode"
    protocol_version = "HTTP/1.0"  # the body ends when the connection closes: fine for streaming

    def log_message(self, fmt: str, *args) -> None:
        log.debug("%s %s", self.client_address[0], fmt % args)

    def _plain(self, status: int, text: str) -> None:
        body = text.encode() + (b"" if text.endswith("\n") else b"\n")
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 (http.server API)
        url = urlsplit(self.path)
        parts = [unquote(p) for p in url.path.split("/") if p]
        try:
            if parts in (["healthz"], ["readyz"], ["livez"]):
                self._plain(200, "ok")
            elif len(parts) == 4 and parts[0] == "containerLogs":
                self._logs(parts[1], parts[2], parts[3], url.query)
            else:
                self._plain(404, f"404 page not found: {url.path}")
        except BadRequest as exc:
            self._plain(exc.status, str(exc))
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError, socket.timeout):
            pass

    def _logs(self, namespace: str, pod: str, container: str, raw_query: str) -> None:
        worker: PodWorker | None = self.server.pods.find(namespace, pod)  # type: ignore[attr-defined]
        if worker is None:
            raise BadRequest(404, f'pod "{namespace}/{pod}" is not on this node')
        c = worker.container(container)
        if c is None:
            raise BadRequest(400, f'container "{container}" in pod "{pod}" is not valid')
        query, previous = parse_query(raw_query, time.time_ns())
        path = c.files.previous_log if previous else c.files.log
        if not path.exists():
            if previous:
                raise BadRequest(400, f'previous terminated container "{container}" in pod "{pod}" not found')
            reason = c.waiting[0] if c.waiting else "ContainerCreating"
            raise BadRequest(400, f'container "{container}" in pod "{pod}" is waiting to start: {reason}')
        if query.tail_lines is not None:
            lines, offset = logs.tail_lines(str(path), query.tail_lines)
        else:
            lines, offset = logs.read_lines(str(path))
        with open(path, "rb") as f:
            inode = os.fstat(f.fileno()).st_ino
            f.seek(offset)
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.end_headers()
            limiter = logs.Limiter(query.limit_bytes)
            if self._emit(logs.select(lines, query), query, limiter):
                return
            if query.follow and not previous:
                self._follow(f, inode, c.files.exit, query, limiter, worker)

    def _emit(self, records, query: logs.LogQuery, limiter: logs.Limiter) -> bool:
        """Write records; True when the byte limit is reached."""
        out = b"".join(r.render(query.timestamps) for r in records)
        chunk, done = limiter.clip(out)
        if chunk:
            self.wfile.write(chunk)
            self.wfile.flush()
        return done

    def _client_gone(self) -> bool:
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            if not readable:
                return False
            self.connection.settimeout(0.05)
            try:
                return self.connection.recv(1) == b""
            finally:
                self.connection.settimeout(None)
        except (ssl.SSLWantReadError, socket.timeout, BlockingIOError):
            return False
        except (OSError, ValueError):
            return True

    def _follow(self, f, inode: int, exit_file: Path, query: logs.LogQuery, limiter: logs.Limiter, worker: PodWorker) -> None:
        pending = b""
        since = logs.LogQuery(since_ns=query.since_ns)
        while not self.server.stopping.is_set():  # type: ignore[attr-defined]
            data = f.read(64 * 1024)
            if data:
                pending += data
                cut = pending.rfind(b"\n") + 1
                if cut:
                    if self._emit(logs.select(pending[:cut].splitlines(keepends=True), since), query, limiter):
                        return
                    pending = pending[cut:]
                continue
            if self._run_over(inode, f.name, exit_file, worker):
                rest = f.read()
                if rest:
                    self._emit(logs.select((pending + rest).splitlines(keepends=True), since), query, limiter)
                return
            if self._client_gone():
                return
            time.sleep(0.2)

    @staticmethod
    def _run_over(inode: int, path: str, exit_file: Path, worker: PodWorker) -> bool:
        if worker.stopping.is_set():
            return True
        try:
            if os.stat(path).st_ino != inode:
                return True  # rotated: the container restarted
        except FileNotFoundError:
            return True
        ended = read_json(exit_file)
        return ended is not None and ended.get("logInode") == inode


class KubeletServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], cert: str, key: str, pods) -> None:
        super().__init__(address, Handler)
        self.pods = pods
        self.stopping = threading.Event()
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self.socket = context.wrap_socket(self.socket, server_side=True, do_handshake_on_connect=False)

    def shutdown(self) -> None:
        self.stopping.set()
        super().shutdown()


def self_signed(state_dir: Path, host: str) -> tuple[str, str]:
    """A serving cert for when --cert/--key are not given (the API server does not verify it)."""
    cert, key = state_dir / "kubelet.crt", state_dir / "kubelet.key"
    if not (cert.exists() and key.exists()):
        state_dir.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", str(key), "-out", str(cert), "-days", "3650", "-subj", "/CN=procnode",
             "-addext", f"subjectAltName=IP:{host},DNS:localhost"],
            check=True, capture_output=True,
        )  # fmt: skip
    return str(cert), str(key)
